# Parse --name value / --name=value options into shell variables; source it from a bash script
# after the variables have been given their defaults:
#
#   stage=0 stop_stage=100 nj=4 use_gpu=false
#   help_message="Usage: $0 [options] <data-dir>"
#   . utils/parse_options.sh || exit 1
#
# --stop-stage 5 sets stop_stage (dashes become underscores). Only variables that are already
# defined (lower-case names) can be set; anything else is an error. A variable whose value is
# true or false only accepts true or false; one whose value is an integer only accepts an integer. Parsing stops at the first argument that is not an
# option (or after `--`); the remaining arguments are left in "$@". --help / -h prints
# $help_message and every settable variable with its current value, then exits 0.

_po_is_settable() {  # a defined, lower-case shell variable
  [[ $1 =~ ^[a-z][a-z0-9_]*$ && $1 != help_message ]] && [[ -v $1 ]]
}

while [ $# -gt 0 ]; do
  case $1 in
    -h|--help)
      echo "${help_message:-Usage: $0 [options] [args]}"
      echo
      echo "Options (current values):"
      for _po_name in $(compgen -v); do
        if _po_is_settable "$_po_name"; then
          printf '  --%s %q\n' "${_po_name//_/-}" "${!_po_name}"
        fi
      done
      exit 0 ;;
    --)
      shift; break ;;
    --?*=*)
      _po_name=${1%%=*}; _po_value=${1#*=}; shift ;;
    --?*)
      _po_name=$1
      if [ $# -lt 2 ]; then echo "$0: option $1 needs a value" >&2; exit 1; fi
      _po_value=$2; shift 2 ;;
    *)
      break ;;
  esac
  _po_var=${_po_name#--}; _po_var=${_po_var//-/_}
  if ! _po_is_settable "$_po_var"; then
    echo "$0: unknown option $_po_name (try --help)" >&2; exit 1
  fi
  case ${!_po_var} in
    true|false)
      case $_po_value in
        true|false) ;;
        *) echo "$0: option $_po_name takes true or false, not '$_po_value'" >&2; exit 1 ;;
      esac ;;
    *)
      if [[ ${!_po_var} =~ ^-?[0-9]+$ && ! $_po_value =~ ^-?[0-9]+$ ]]; then
        echo "$0: option $_po_name takes an integer, not '$_po_value'" >&2; exit 1
      fi ;;
  esac
  printf -v "$_po_var" '%s' "$_po_value"
done

unset -v _po_name _po_value _po_var
unset -f _po_is_settable
true
