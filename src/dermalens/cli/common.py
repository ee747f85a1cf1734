"""Options several subcommands share, worded once."""
from __future__ import annotations

from dataclasses import fields

from ..config import DATASET_FORMATS


def setting_choices(section_class: type, name: str) -> tuple:
    """The allowed values of a config setting, as its dataclass declares them."""
    return next(f.metadata["choices"] for f in fields(section_class) if f.name == name)


def add_data_options(parser, required: bool = False) -> None:
    parser.add_argument("--data", required=required, help="dataset path (default: $DERMALENS_DATA)")
    parser.add_argument("--format", choices=DATASET_FORMATS,
                        help="dataset layout (default: the config's data.format; auto detects it from the path)")


def add_set_option(parser, example: str = "training.max_epochs=3", what: str = "override") -> None:
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help=f"{what}, e.g. {example}")
