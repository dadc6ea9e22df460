#!/usr/bin/env bash
# Copy part of a Kaldi data directory. Face over `avtk subset-data-dir`.
set -euo pipefail

usage() {
  cat <<USAGE
Usage: subset_data_dir.sh [--first|--random] [--seed S] <src-dir> <num-utt> <dst-dir>
       subset_data_dir.sh --utt-list <file> <src-dir> <dst-dir>
       subset_data_dir.sh --spk-list <file> <src-dir> <dst-dir>
  --first        the first <num-utt> utterances in sorted order
  --random       <num-utt> utterances drawn at random with seed S (default 0); the default mode
  --utt-list F   the utterances listed in F (first field of each line)
  --spk-list F   every utterance of the speakers listed in F
USAGE
}

mode=--random
list=
seed=0
while [ $# -gt 0 ]; do
  case "$1" in
    --first|--random) mode=$1; shift ;;
    --seed) seed=${2:?--seed needs a value}; shift 2 ;;
    --utt-list|--spk-list) mode=$1; list=${2:?$1 needs a file}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "subset_data_dir.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) break ;;
  esac
done

case "$mode" in
  --utt-list|--spk-list)
    if [ $# -ne 2 ]; then usage >&2; exit 2; fi
    exec avtk subset-data-dir "$mode" "$list" "$1" "$2" ;;
  *)
    if [ $# -ne 3 ]; then usage >&2; exit 2; fi
    exec avtk subset-data-dir "$mode" "$2" --seed "$seed" "$1" "$3" ;;
esac
