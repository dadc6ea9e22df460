#!/usr/bin/env bash
# Make a Kaldi data directory consistent in place: keep utterances present in every per-utterance
# file, drop speakers without utterances, sort, regenerate spk2utt; originals go to <dir>/.backup/.
# Face over `avtk fix-data-dir`.
set -euo pipefail

usage() { echo "Usage: fix_data_dir.sh <data-dir>"; }
case "${1:-}" in -h|--help) usage; exit 0 ;; esac
if [ $# -ne 1 ]; then usage >&2; exit 2; fi
exec avtk fix-data-dir "$1"
