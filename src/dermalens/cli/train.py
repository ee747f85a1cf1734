"""`dermalens train`: a config and overrides -> a run folder, evaluated on its test split once."""
from __future__ import annotations

import sys
from pathlib import Path

from ..config import ConfigError
from .common import add_data_options, add_set_option, check_output_folder, is_global_zero, positive_int


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model (config + overrides), evaluate it on the test split once",
                              epilog="example: dermalens train --config ham10000_cpu --data $DERMALENS_DATA/ham10000_224 "
                                     "--set training.max_time=00:00:30:00")
    p.add_argument("--config", help="YAML file or name in configs/ (e.g. dermamnist_cpu)")
    add_data_options(p)
    p.add_argument("--run-dir", help="run folder (default runs/<name>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint; on a "
                   "finished cross-validated run, build what --set now asks for (e.g. training.student=true) from "
                   "its fold models")
    p.add_argument("--folds", type=positive_int, metavar="K", help="K-fold cross-validation over train + val, the fold "
                   "models shipped as one ensemble (training.folds; default: the config's)")
    add_set_option(p)
    p.set_defaults(func=run)


def note_when_no_config_on_cpu() -> None:
    import torch

    if not torch.cuda.is_available():
        print("note: no --config: this is the original design (EfficientNet-B3 + CBAM at 300 px), a GPU job "
              "(about 2.6 img/s here). On a CPU use --config ham10000_cpu (real images, about an hour) "
              "or --config demo.", file=sys.stderr)


def run(args) -> int:
    from ..config_files import load_named_config
    from ..evaluation.summary import format_metrics_summary
    from ..training.job import format_cross_validation, run_training

    overrides = list(args.set or []) + ([f"training.folds={args.folds}"] if args.folds else [])
    if args.resume:
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            raise ConfigError(f"cannot resume: no run folder at {run_dir}")
        ignored = [option for option, value in (("--config", args.config), ("--run-dir", args.run_dir)) if value]
        if ignored:   # they were silently ignored: the run goes on with its own config.yaml, in its own folder
            raise ConfigError(f"--resume continues {run_dir} with its own config.yaml in its own folder; "
                             f"drop {' and '.join(ignored)} (change a setting with --set)")
        given = {key: str(value) for key, value in (("path", args.data), ("format", args.format)) if value}
        result = run_training(run_dir=run_dir, resume=True, overrides=overrides,
                              settings={"data": given} if given else None)
    else:
        if not args.config:
            note_when_no_config_on_cpu()
        config = load_named_config(args.config, overrides, data=args.data, data_format=args.format)
        check_output_folder(args.run_dir, "--run-dir")
        result = run_training(config, Path(args.run_dir) if args.run_dir else None)
    if not is_global_zero():   # under DDP every process returns here: one summary, from the first
        return 0
    print(f"run folder: {result.run_dir}\nbest checkpoint: {result.best_checkpoint} "
          f"(trained {result.train_seconds / 60:.1f} min)")
    if getattr(result, "summary", None):
        print(format_cross_validation(result.summary))
    if result.metrics:
        print(format_metrics_summary(result.metrics, result.run_dir))
    return 0
