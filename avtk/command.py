"""The argument parser every command starts from (`--config file.yaml` and `--verbose`), and the
range-checked numeric types every numeric option uses (`count`, `number`)."""
import argparse
import io
import math

import configargparse
import yaml

from avtk.data.table import read_text


def make_parser(description, config_file=True):
    """A configargparse parser whose options may also come from a flat YAML file (`--config`).

    YAML keys are the long option names without dashes (`num-speakers: 40` or `num_speakers: 40`);
    an unknown key is an error naming it, and so is a nested mapping (naming file:line). The file is
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
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log debug messages")
    return parser


def _open_config(path):
    stream = io.StringIO(read_text(path, "config ", keys_only=True))
    stream.name = path
    return stream


class _YamlConfig(configargparse.YAMLConfigFileParser):
    """A flat mapping of option values; `snake_case` keys are accepted as well as `dash-case`."""

    def parse(self, stream):
        name = getattr(stream, "name", "config file")
        text = stream.read()
        try:
            node = yaml.compose(text)
        except yaml.YAMLError as err:
            raise configargparse.ConfigFileParserException(f"{name}: not YAML: {err}") from None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(value, yaml.MappingNode):
                    raise configargparse.ConfigFileParserException(
                        f"{name}:{key.start_mark.line + 1}: option {key.value!r} is a nested mapping; a --config "
                        "file holds flat `option: value` lines"
                    )
        items = super().parse(io.StringIO(text))
        return {key.replace("_", "-"): value for key, value in items.items()}


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
