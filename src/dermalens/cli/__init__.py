"""The `dermalens` command: one module per subcommand, each parsing its options and calling the library once."""
from __future__ import annotations

import argparse
import logging
import sys

from ..classes import RESEARCH_DISCLAIMER
from ..config_files import CONFIGS_DIR, resolve_config_path  # noqa: F401  (scripts name configs as the command does)
from . import cache, config, data, demo, evaluate, explain, export, package, predict, serve, train

# In the order `dermalens --help` lists them.
SUBCOMMANDS = (train, evaluate, predict, data, config, demo, explain, serve, export, package, cache)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="dermalens", description=f"Skin-lesion classifiers. {RESEARCH_DISCLAIMER}")
    parser.add_argument("-v", "--verbose", action="store_true", help="INFO logs, and full tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"dermalens {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for subcommand in SUBCOMMANDS:
        subcommand.add_subcommand(subparsers)
    return parser


def quiet_libraries(verbose: bool) -> None:
    """One line per message: no litlogger tip, and warnings on one line without their source line
    (Lightning also sets its own file:line warning format when it is imported)."""
    import warnings

    def no_tips(record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()

    for handler in logging.getLogger().handlers:   # on the root handlers: child loggers' records pass here
        handler.addFilter(no_tips)
    # Lightning's own console handler goes when training starts (training.run.lightning_logs_through_root).

    def one_line(message, category, filename, lineno, file=None, line=None):
        # showwarning rather than formatwarning: Lightning replaces formatwarning when it is imported.
        (file or sys.stderr).write(f"warning: {message} ({category.__name__})\n")

    warnings.showwarning = one_line
    # Inside Lightning and torch, nothing a user can act on (Lightning 2.6 with torch 2.14).
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries(args.verbose)
    from ..config import ConfigError
    from ..config_files import UnknownConfigName
    from ..data.split import LesionLeakageError
    from ..data.validation import BadDataError
    from ..models.calibration_record import CheckpointError
    from ..training.errors import TrainingInterrupted

    try:
        return args.func(args)
    except TrainingInterrupted as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        return 130
    except UnknownConfigName as error:   # as for a misspelled option (argparse's exit status 2), the names listed
        print(f"error: {error}", file=sys.stderr)
        return 2
    # OSError: a file or folder that cannot be read or written (it names the path); the commands check
    # their outputs before the work, so this is the last resort, not the usual answer.
    except (ConfigError, BadDataError, CheckpointError, OSError, LesionLeakageError, ValueError) as error:
        if args.verbose:   # -v: the whole traceback, for a bug report
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
