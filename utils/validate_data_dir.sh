#!/usr/bin/env bash
# Check a Kaldi data directory; prints every problem as file:line and exits 1 if there are any.
# Face over `avtk validate-data-dir` (see `avtk validate-data-dir --help` for the checks).
set -euo pipefail

usage() {
  cat <<USAGE
Usage: validate_data_dir.sh [--no-feats] [--check-audio] <data-dir>
  --no-feats     do not require feats.scp
  --check-audio  read each plain-path audio file's header: missing, unreadable or truncated files, and
                 durations more than 0.02 s from utt2dur, are problems
  (Kaldi's --no-text and --no-spk-sort are accepted and ignored: text is never required.)
USAGE
}

opts=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-feats|--check-audio) opts+=("$1"); shift ;;
    --no-text|--no-spk-sort) shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) echo "validate_data_dir.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) break ;;
  esac
done
if [ $# -ne 1 ]; then usage >&2; exit 2; fi
exec avtk validate-data-dir ${opts[@]+"${opts[@]}"} "$1"
