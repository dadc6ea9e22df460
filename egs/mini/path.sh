# Environment for the recipe: Kaldi-style utils on PATH, C sorting, the avtk command.
export PATH="$(avtk utils-dir 2>/dev/null || echo "$PWD/utils"):$PATH"  # the installed avtk's utils/ (see egs/TEMPLATE)
export LC_ALL=C
export PYTHONUNBUFFERED=1
if ! command -v avtk >/dev/null 2>&1; then
  echo "path.sh: the avtk command is not on PATH; install it first: pip install torch==2.13.0 && pip install -e ../.." >&2
  return 1 2>/dev/null || exit 1
fi
