# Environment for the recipe: C sorting, the avtk command, and avtk's shell helpers (utils/: parse_options.sh,
# run.pl, split_scp, validate_data_dir.sh, ...) on PATH. `avtk utils-dir` says where the installed avtk keeps them,
# so a copy of this directory works wherever it lands, with no utils symlink.
export LC_ALL=C
export PYTHONUNBUFFERED=1
if ! command -v avtk >/dev/null 2>&1; then
  echo "path.sh: the avtk command is not on PATH; install avtk first (pip install torch==2.13.0, then pip install" \
    "the avtk source tree), or activate the environment that has it" >&2
  return 1 2>/dev/null || exit 1
fi
AVTK_UTILS=$(avtk utils-dir) || { echo "path.sh: avtk utils-dir failed" >&2; return 1 2>/dev/null || exit 1; }
export PATH="$AVTK_UTILS:$PATH"
