"""`dermalens demo`: the main job: train a CPU-sized model, evaluate it, write the report."""
from __future__ import annotations

from ..training.demo import REAL_DEMO_FOLDER
from .common import add_set_option, is_global_zero


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the main job: train a CPU-sized model, evaluate it, write the report",
                              epilog=f"example: dermalens demo --data $DERMALENS_DATA   (a folder holding "
                                     f"{REAL_DEMO_FOLDER}/ trains on those real images)")
    p.add_argument("--data", help="real data (default $DERMALENS_DATA, else download DermaMNIST, else synthetic); "
                   f"a folder holding {REAL_DEMO_FOLDER}/ trains on those real images")
    p.add_argument("--config", default=None, help="default: demo (real HAM10000) or demo_dermamnist (thumbnails)")
    add_set_option(p, "evaluation.n_bootstrap=500", "config override")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..evaluation.summary import format_metrics_summary
    from ..training.demo import run_demo

    result = run_demo(args.data, args.config, args.set)
    if not is_global_zero():   # under DDP every process returns here: one summary, from the first
        return 0
    print(f"run folder: {result.run_dir}")
    if getattr(result, "summary", None):   # a cross-validated config: its folds, as `dermalens train` shows them
        from ..training.job import format_cross_validation

        print(format_cross_validation(result.summary))
    if result.metrics:
        print(format_metrics_summary(result.metrics, result.run_dir))
    if result.best_checkpoint:
        print(f"try: dermalens predict --model {result.best_checkpoint} <image.jpg>")
    return 0
