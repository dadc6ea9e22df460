"""The argument parser every command starts from: `--config file.yaml` and `--verbose`."""
import configargparse


def make_parser(description, config_file=True):
    """A configargparse parser whose options may also come from a flat YAML file (`--config`).

    YAML keys are the long option names without dashes (`num-speakers: 40` or `num_speakers: 40`);
    an unknown key is an error naming it. Commands whose `--config` is a nested YAML of their own
    (avtk train) pass config_file=False and define `--config` themselves.
    """
    parser = configargparse.ArgumentParser(
        description=description,
        config_file_parser_class=_YamlConfig,
        formatter_class=configargparse.ArgumentDefaultsHelpFormatter,
    )
    if config_file:
        parser.add_argument("--config", is_config_file=True, help="YAML file of option values")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log debug messages")
    return parser


class _YamlConfig(configargparse.YAMLConfigFileParser):
    """Accept `snake_case` keys as well as `dash-case`, so YAML reads naturally."""

    def parse(self, stream):
        items = super().parse(stream)
        return {key.replace("_", "-"): value for key, value in items.items()}
