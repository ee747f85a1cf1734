"""`dermalens evaluate`: score a checkpoint; writes only into its own output folder."""
from __future__ import annotations

from ..config import ConfigError, EvaluationSection
from .common import add_data_options, add_set_option, check_output_folder, setting_choices


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate a checkpoint: metrics.json + report with figures",
                              epilog="examples: dermalens evaluate --run runs/x   |   dermalens evaluate --checkpoint "
                                     "runs/x/checkpoints/best.ckpt --data ISIC2018 --format isic2018 --split test")
    p.add_argument("--run", help="run folder (uses its config, split and best checkpoint)")
    p.add_argument("--checkpoint", help="best | last (of --run), a .ckpt, a model package folder, or "
                   "hf-hub:user/repo[@revision]")
    p.add_argument("--config", help="config for an external data set (with --checkpoint and --data)")
    add_data_options(p)
    p.add_argument("--split", default=None, choices=setting_choices(EvaluationSection, "split"),
                   help="the run's own data: test (default), val or train of its split.csv; other data: all "
                        "(default: every image); an ISIC 2018 folder: train/val/test = its official "
                        "Training/Validation/Test set, scored whole")
    p.add_argument("--out", help="output folder (default: <run or checkpoint folder>/eval-<data>-<split>/)")
    p.add_argument("--no-tta", action="store_true", help="no test-time flips")
    p.add_argument("--redraw-split", action="store_true",
                   help="a run whose split.csv is gone: draw its split again (risky: refused without this)")
    add_set_option(p, "evaluation.n_bootstrap=500", "config override")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..evaluation.summary import format_metrics_summary
    from ..evaluation.targets import evaluate_target

    if not args.run and not (args.checkpoint and args.data):
        raise ConfigError("give --run RUN_DIR, or --checkpoint FILE with --data PATH")
    check_output_folder(args.out, "--out")
    if args.checkpoint and not args.run:
        from ..models.hub_reference import resolve_model_reference

        args.checkpoint = resolve_model_reference(args.checkpoint)
    metrics, out_dir = evaluate_target(run=args.run, checkpoint=args.checkpoint, config=args.config, data=args.data,
                                       data_format=args.format, split=args.split, out=args.out, tta=not args.no_tta,
                                       overrides=args.set, redraw_split=args.redraw_split)
    print(format_metrics_summary(metrics, out_dir))
    return 0
