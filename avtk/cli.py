"""`avtk <command> [options]`: dispatch to avtk/bin/<command>.py."""
import ast
import importlib
import logging
import os
import sys
from pathlib import Path

from avtk import __version__
from avtk.errors import AvtkError
from avtk.io.atomic import command_inputs

BIN_DIR = Path(__file__).resolve().parent / "bin"


def commands():
    """Map each command name to the first line of its module docstring (read without importing)."""
    found = {}
    for path in sorted(BIN_DIR.glob("*.py")):
        if path.name.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        found[path.stem.replace("_", "-")] = doc.strip().splitlines()[0] if doc.strip() else ""
    return found


def usage():
    cmds = commands()
    width = max(len(c) for c in cmds)
    lines = [
        f"avtk {__version__}: audio-visual speaker recognition toolkit",
        "",
        "usage: avtk <command> [options]     (avtk <command> --help for its options)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {summary}" for name, summary in cmds.items()]
    return "\n".join(lines)


def setup_logging(command, verbose=0):
    level = logging.DEBUG if verbose else logging.INFO
    fmt = f"%(asctime)s %(levelname)s [avtk {command}] %(message)s"
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%Y-%m-%d %H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)


def run_command(command, argv):
    """Parse argv with the command's parser and run it; AvtkError becomes a message and exit 1."""
    module = importlib.import_module(f"avtk.bin.{command.replace('-', '_')}")
    parser = module.get_parser()
    parser.prog = f"avtk {command}"
    setup_logging(command)

    def usage_error(message):
        # A bad option value is bad input like any other: one ERROR line and exit 1 (argparse would exit 2).
        raise AvtkError(f"{message} (usage: avtk {command} --help)")

    parser.error = usage_error
    # no output of the command may replace a file it read (avtk.io.atomic), its --config file included: the
    # arguments are parsed inside the block, so the config file(s) configargparse reads are recorded too
    with command_inputs():
        try:
            args = parser.parse_args(argv)
        except AvtkError as err:
            logging.getLogger().error("%s", err)
            return 1
        setup_logging(command, getattr(args, "verbose", 0))
        return _run_main(module, args)


def _run_main(module, args):
    """module.main(args) -> exit status; AvtkError becomes one ERROR line and 1, ^C 130, a closed stdout 141."""
    try:
        rc = module.main(args)
    except AvtkError as err:
        logging.getLogger().error("%s", err)
        return 1
    except KeyboardInterrupt:
        logging.getLogger().error("interrupted")
        return 130
    except BrokenPipeError:
        # the reader of standard output went away (`avtk compute-metrics x | head -1`): stop quietly, as a
        # Unix tool does on SIGPIPE, with its status 128 + 13 (stdout is pointed at /dev/null so that the
        # interpreter's own flush at exit does not fail again)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return int(rc or 0)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"avtk {__version__}")
        return 0
    command = argv[0]
    if command not in commands():
        print(f"avtk: unknown command '{command}'\n\n{usage()}", file=sys.stderr)
        return 2
    return run_command(command, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
