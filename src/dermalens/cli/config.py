"""`dermalens config show`: a config with every key and its value (defaults filled in)."""
from __future__ import annotations

from .common import add_set_option


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser("config", help="show a config with every key and its value (defaults filled in)",
                              usage="dermalens config show [NAME] [--set KEY=VALUE ...]",
                              description="config show [NAME] [--set KEY=VALUE ...]: print a config (a shipped "
                                          "name or a YAML file; none: the defaults) as YAML, every key filled in; "
                                          "--set KEY=VALUE overrides one key (repeatable), as train and evaluate "
                                          "take it, and a misspelled key is named with the nearest known one",
                              epilog="example: dermalens config show ham10000_cpu --set model.image_size=192")
    config_sub = p.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the resolved config as YAML")
    show.add_argument("name", nargs="?", help="a shipped config name or a YAML file (default: the defaults only)")
    add_set_option(show)
    show.set_defaults(func=run_show)


def run_show(args) -> int:
    from ..config import dump_config
    from ..config_files import load_named_config

    print(dump_config(load_named_config(args.name, args.set)), end="")
    return 0
