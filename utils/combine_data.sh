#!/usr/bin/env bash
# Combine Kaldi data directories into <dst>; an utterance id in two sources is an error.
# Face over `avtk combine-data`.
set -euo pipefail

usage() { echo "Usage: combine_data.sh <dst-dir> <src-dir1> [<src-dir2> ...]"; }
case "${1:-}" in -h|--help) usage; exit 0 ;; esac
if [ $# -lt 2 ]; then usage >&2; exit 2; fi
exec avtk combine-data "$@"
