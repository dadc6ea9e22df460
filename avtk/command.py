"""The argument parser every command starts from (`--config file.yaml` and `--verbose`), and the
range-checked numeric types every numeric option uses (`count`, `number`), and the `--device` type."""
import argparse
import io
import math

import configargparse
import yaml

from avtk.data.table import parse_yaml, read_text
from avtk.errors import AvtkError


def make_parser(description, config_file=True):
    """A configargparse parser whose options may also come from a flat YAML file (`--config`).

    YAML keys are the long option names without dashes (`num-speakers: 40` or `num_speakers: 40`);
    an unknown key, a repeated key and a nested mapping are errors naming file:line. The file is
    read by the text rule of avtk.data.table (UTF-8; a BOM and CRLF accepted; bad bytes and invisible
    characters in a key are errors naming file:line). Commands whose `--config` is a nested YAML of
    their own (avtk train) pass config_file=False and define `--config` themselves.
    """
    parser = configargparse.ArgumentParser(
        description=description,
        config_file_parser_class=_YamlConfig,
        config_file_open_func=_open_config,
        formatter_class=configargparse.ArgumentDefaultsHelpFormatter,
    )
    if config_file:
        parser.add_argument("--config", is_config_file=True, help="YAML file of option values")
    parser._config_file_parser.parser = parser  # the options a --config file may set
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log debug messages")
    return parser


def _open_config(path):
    # The file is read by `_YamlConfig.parse`: configargparse would wrap an error raised here in its own text.
    stream = io.StringIO()
    stream.name = path
    return stream


class _YamlConfig(configargparse.YAMLConfigFileParser):
    """A flat mapping of option values; `snake_case` keys are accepted as well as `dash-case`. Parsed by
    avtk.data.table.parse_yaml (a repeated key is an error); an unknown option, a nested mapping or a
    document that is not a mapping is an AvtkError naming the file (and the line)."""

    parser = None  # the ArgumentParser whose options the file may set (set by make_parser)

    def parse(self, stream):
        name = stream.name
        text = read_text(name, "config ", keys_only=True)
        data = parse_yaml(text, name)
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise AvtkError(f"{name}: a --config file holds a mapping of option: value lines, not a "
                            f"{'list' if isinstance(data, list) else type(data).__name__}")
        lines = {key.value: key.start_mark.line + 1 for key, _ in yaml.compose(text).value}
        known = self._known()
        for key, value in data.items():
            where = f"{name}:{lines.get(str(key), '?')}"
            if isinstance(value, dict):
                raise AvtkError(f"{where}: option {key!r} is a nested mapping; a --config file holds flat "
                                "`option: value` lines")
            if known is not None and str(key).replace("_", "-") not in known:
                raise AvtkError(f"{where}: unknown option {key!r} (known: {', '.join(sorted(known))})")
        return {str(key).replace("_", "-"): value if isinstance(value, list) else str(value)
                for key, value in data.items() if value is not None}

    def _known(self):
        if self.parser is None:
            return None
        return {opt[2:] for action in self.parser._actions if not getattr(action, "is_config_file_arg", False)
                and not isinstance(action, argparse._HelpAction) for opt in action.option_strings
                if opt.startswith("--")}


def _ranged(kind, convert, low, high, low_open, high_open, finite):
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        if finite and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
            hi = "" if high is None else (f"< {high}" if high_open else f"<= {high}")
            bounds = " and ".join(b for b in (lo, hi) if b)
            raise argparse.ArgumentTypeError(f"{text} is out of range (must be {bounds})")
        return value

    parse.__name__ = kind  # argparse names the type in its messages
    return parse


def count(low=0, high=None):
    """An argparse type: an integer in [low, high] (high None: no upper bound); anything else is a usage
    error naming the option, e.g. `argument --num-frames: 0 is out of range (must be >= 1)`."""
    return _ranged("an integer", int, low, high, False, False, False)


def number(low=None, high=None, low_open=False, high_open=False):
    """An argparse type: a finite float in [low, high] (an open end with low_open/high_open; None: no
    bound); NaN and infinities are rejected. Errors as for `count`."""
    return _ranged("a number", float, low, high, low_open, high_open, True)


def device(text):
    """An argparse type for every `--device` option: cpu, cuda, cuda:N (N a GPU index) or auto (cuda when
    torch sees a GPU, else cpu); returns the torch device string. Anything else is a usage error naming the
    option, e.g. `argument --device: 'cuda:x' is not a device (cpu, cuda, cuda:N or auto)`."""
    if text == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if text in ("cpu", "cuda") or (text.startswith("cuda:") and text[5:].isascii() and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda, cuda:N or auto)")
