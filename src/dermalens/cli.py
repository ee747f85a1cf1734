"""The `dermalens` command: a thin layer that only parses arguments and wires the pipeline."""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
from pathlib import Path

from .classes import CLASS_CODES, RESEARCH_DISCLAIMER
from .explain.cli import add_subcommand as add_explain_subcommand
from .inference.export_cli import add_subcommand as add_export_subcommand
from .inference.package_cli import add_subcommand as add_package_subcommand
from .inference.runtimes import RUNTIME_HELP, RUNTIMES
from .serving.cli import add_subcommand as add_serve_subcommand

# Shipped with the package (package data), so config names work from a wheel too.
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


def resolve_config_path(name: str | None) -> Path | None:
    """A config path, or a bare name of a shipped config (dermalens/configs/)."""
    if name is None:
        return None
    path = Path(name)
    if path.is_file():
        return path
    candidate = CONFIGS_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))
    import difflib

    close = difflib.get_close_matches(Path(name).stem, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise SystemExit(f"error: config not found: {name} (no such file, and not a shipped config name).{hint} "
                     f"Shipped configs: {', '.join(known)}")


def _config_from_args(args) -> dict:
    from .config import load_config

    overrides = list(args.set or [])
    if getattr(args, "data", None):
        overrides.append(f"data.path={args.data}")
    if getattr(args, "format", None):
        overrides.append(f"data.format={args.format}")
    return load_config(resolve_config_path(args.config), overrides)


def print_metrics_summary(metrics: dict, run_dir: Path) -> None:
    ci = metrics.get("ci95", {})

    def fmt(key, value):
        if value is None:
            return "n/a"
        low_high = ci.get(key)
        interval = f"  [95% CI {low_high[0]:.3f}-{low_high[1]:.3f}]" if low_high and None not in low_high else ""
        return f"{value:.3f}{interval}"

    print(f"\n{metrics.get('split', 'test')} split, {metrics.get('n_samples')} images:")
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "auc_macro", "ece", "brier"):
        if metrics.get(key) is not None:
            print(f"  {key:18s} {fmt(key, metrics[key])}")
    for code in ("mel", "df"):
        if code in metrics["per_class"]:
            for stat in ("recall", "f1"):
                print(f"  {stat + '_' + code:18s} {fmt(stat + '_' + code, metrics['per_class'][code].get(stat))}")
    print(f"report: {run_dir / 'report.md'}\n{RESEARCH_DISCLAIMER}")


def cmd_train(args) -> int:
    from .training.run import load_run_config, train

    if args.resume:
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            raise SystemExit(f"error: cannot resume: no run folder at {run_dir}")
        config = load_run_config(run_dir, args.set)
        result = train(config, run_dir, resume=True)
    else:
        if not args.config:
            import torch

            if not torch.cuda.is_available():
                print("note: no --config: this is the original design (EfficientNet-B3 + CBAM at 300 px), a GPU job "
                      "(about 2.6 img/s here). On a CPU use --config ham10000_cpu (real images, about an hour) "
                      "or --config demo.", file=sys.stderr)
        config = _config_from_args(args)
        result = train(config, Path(args.run_dir) if args.run_dir else None)
    print(f"run folder: {result.run_dir}\nbest checkpoint: {result.best_checkpoint} "
          f"(trained {result.train_seconds / 60:.1f} min)")
    if result.metrics:
        print_metrics_summary(result.metrics, result.run_dir)
    return 0


ISIC2018_SETS = {"train": "Training", "val": "Validation", "test": "Test"}


def cmd_evaluate(args) -> int:
    """Score a checkpoint; writes only into its output folder (never the run's test report or calibration).

    The run's own data: its split.csv, split test by default. Any other data set: every image
    (--split all) by default; an ISIC 2018 folder's official set (--split test = the Test set)
    is read and scored whole, never re-split.
    """
    from .config import load_config
    from .data.readers import detect_format
    from .evaluation.evaluate import evaluate_checkpoint
    from .models.checkpoint import read_checkpoint_metadata

    overrides = list(args.set or [])
    split_dir = None
    if args.run:
        run_dir = Path(args.run)
        from .training.run import load_run_config

        config = load_run_config(run_dir, overrides)
        checkpoint = run_dir / "checkpoints" / f"{args.checkpoint or 'best'}.ckpt" \
            if args.checkpoint in (None, "best", "last") else Path(args.checkpoint)
        own_data = not args.data
        split_dir = run_dir if own_data else None
        out_root = run_dir
    else:
        if not args.checkpoint or not args.data:
            raise SystemExit("error: give --run RUN_DIR, or --checkpoint FILE with --data PATH")
        checkpoint = Path(args.checkpoint)
        meta = read_checkpoint_metadata(checkpoint)["dermalens"]
        config = load_config(resolve_config_path(args.config), overrides)
        config["model"].update(meta["model_config"])
        own_data = False
        out_root = checkpoint.parent
    if not checkpoint.is_file():
        raise SystemExit(f"error: checkpoint not found: {checkpoint}")
    if args.data:
        if not Path(args.data).exists():
            raise SystemExit(f"error: data path not found: {args.data}")
        config["data"]["path"] = args.data
    if args.format:
        config["data"]["format"] = args.format
    split = args.split or ("test" if own_data else "all")
    if not own_data:
        fmt = config["data"]["format"]
        fmt = detect_format(Path(config["data"]["path"])) if fmt == "auto" else fmt
        if fmt == "isic2018" and split in ISIC2018_SETS:
            # An official ISIC 2018 set is read as such and scored whole.
            config["data"]["format"], config["data"]["subset"] = "isic2018", ISIC2018_SETS[split]
            split = "all"
        elif split != "all":
            print(f"warning: --split {split} of a data set that is not the run's own re-splits it and scores a "
                  f"slice; --split all scores every image", file=sys.stderr)
    if args.no_tta:
        config["evaluation"]["tta"] = False
    name = config["data"].get("subset") or Path(config["data"]["path"] or config["data"]["format"]).stem
    out_dir = Path(args.out) if args.out else out_root / f"eval-{name}-{args.split or split}"
    metrics = evaluate_checkpoint(config, checkpoint, out_dir, split=split, split_dir=split_dir)
    print_metrics_summary(metrics, out_dir)
    return 0


def format_predictions(rows: list[dict], failures: list[str], fmt: str, runtime: str) -> str:
    """Predictions as a table, long CSV, JSON, or an ISIC 2018 Task 3 submission CSV."""
    from .classes import ISIC2018_SUBMISSION_COLUMNS

    out = io.StringIO()
    if fmt == "json":
        json.dump({"predictions": rows, "errors": failures, "runtime": runtime,
                   "disclaimer": RESEARCH_DISCLAIMER}, out, indent=2)
        out.write("\n")
    elif fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(["image", "rank", "class", "name", "probability"])
        for row in rows:
            for rank, item in enumerate(row["top_k"], 1):
                writer.writerow([row["image"], rank, item["class"], item["name"], f"{item['probability']:.6f}"])
    elif fmt == "isic2018":
        # One row per image, the image id being the file stem, as isic-challenge-scoring reads it.
        writer = csv.writer(out)
        writer.writerow(["image", *ISIC2018_SUBMISSION_COLUMNS])
        for row in rows:
            writer.writerow([Path(row["image"]).stem, *(f"{row['probabilities'][c.lower()]:.6f}"
                                                         for c in ISIC2018_SUBMISSION_COLUMNS)])
    else:
        for row in rows:
            out.write(f"{row['image']}\n")
            for rank, item in enumerate(row["top_k"], 1):
                out.write(f"  {rank}. {item['class']:6s} {item['probability']:7.2%}  {item['name']}\n")
        out.write(f"{RESEARCH_DISCLAIMER}\n")
    return out.getvalue()


def cmd_predict(args) -> int:
    from .data.image_files import find_image_files
    from .inference.onnx_predictor import load_predictor
    from .inference.prediction import predict_files

    paths = find_image_files(args.images)
    # runtime "auto": ONNX Runtime when an up-to-date <stem>.onnx sits beside the .ckpt;
    # tta None: as the model was calibrated.
    predictor = load_predictor(args.model, tta=args.tta, runtime=args.runtime)
    if args.output_format == "isic2018" and sorted(predictor.classes) != sorted(CLASS_CODES):
        raise ValueError(f"-f isic2018 writes the 7 HAM10000 classes; {args.model} predicts "
                         f"{', '.join(predictor.classes)}: use -f csv or -f json")
    predictions, failures = predict_files(predictor, paths, batch_size=args.batch_size,
                                          progress=sys.stderr.isatty())
    rows = [p.to_dict(args.top_k) for p in predictions]
    text = format_predictions(rows, failures, args.output_format, predictor.runtime)
    if args.output:
        from .atomic_io import atomic_write_text

        atomic_write_text(Path(args.output), text)
        print(f"{len(rows)} of {len(paths)} images predicted; written to {args.output}. {RESEARCH_DISCLAIMER}",
              file=sys.stderr)
    else:
        sys.stdout.write(text)
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


def cmd_data(args) -> int:
    from .config import load_config
    from .data.prepare import load_dataset
    from .data.validation import find_unreadable_images, format_summary, summarise_dataset, write_issues_csv

    overrides = [f"data.path={args.data}"] + ([f"data.format={args.format}"] if args.format else [])
    if args.restrict_to_available:
        overrides.append("data.restrict_to_available=true")
    dataset = load_dataset(load_config(None, overrides))
    issues = list(dataset.issues)
    if args.check_images:
        issues += find_unreadable_images(dataset)
        dataset.issues = issues
    print(format_summary(summarise_dataset(dataset)))
    if issues:
        for issue in issues[:20]:
            print(f"  {issue.kind:17s} {issue.image_id:20s} {issue.path or ''}  {issue.detail}")
        if len(issues) > 20:
            print(f"  ... and {len(issues) - 20} more")
        if args.issues_csv:
            write_issues_csv(issues, Path(args.issues_csv))
            print(f"issues written to {args.issues_csv}")
    return 1 if issues and args.strict else 0


REAL_DEMO_FOLDER = "ham10000_224"   # inside the shared data folder: real HAM10000 images, one per lesion


def demo_data(data: Path) -> tuple[Path, str | None]:
    """The data folder and config the demo should use for `data`.

    Real-resolution HAM10000 first (a model trained on it works on real
    photos); DermaMNIST thumbnails only when nothing else is there.
    """
    from .data.readers import detect_format
    from .data.readers.ham10000 import HAM10000_METADATA

    if (data / REAL_DEMO_FOLDER / HAM10000_METADATA).is_file():
        return data / REAL_DEMO_FOLDER, "demo"
    fmt = detect_format(data)
    return data, ("demo_dermamnist" if fmt == "dermamnist" else None)


def cmd_demo(args) -> int:
    from .config import load_config
    from .data.readers import DatasetUnavailable, download_dermamnist
    from .training.run import train

    overrides = list(args.set or [])
    data = args.data or os.environ.get("DERMALENS_DATA")
    config_name = args.config
    if data:
        data_path, chosen = demo_data(Path(data))
        config_name = config_name or chosen or "demo"
        print(f"demo data: {data_path} (config {config_name})")
        overrides.append(f"data.path={data_path}")
    else:
        try:
            from .config import user_cache_dir

            path = download_dermamnist(user_cache_dir() / "dermamnist")
            print(f"demo data: DermaMNIST downloaded to {path}")
            overrides.append(f"data.path={path}")
            config_name = config_name or "demo_dermamnist"
        except DatasetUnavailable as error:
            banner = "=" * 78
            print(f"{banner}\nNO REAL DATA: no --data, no DERMALENS_DATA, and DermaMNIST could not be downloaded\n"
                  f"({error}).\nRunning on a small GENERATED data set that is NOT REAL so the pipeline can be "
                  f"seen end to end.\nIts numbers mean nothing. Give real data with --data PATH.\n{banner}")
            overrides += ["data.format=synthetic", "name=demo-SYNTHETIC-NOT-REAL"]
            config_name = config_name or "demo_dermamnist"
    config = load_config(resolve_config_path(config_name), overrides)
    result = train(config)
    print(f"run folder: {result.run_dir}")
    if result.metrics:
        print_metrics_summary(result.metrics, result.run_dir)
    print(f"try: dermalens predict --model {result.best_checkpoint} <image.jpg>")
    return 0


def cmd_config_show(args) -> int:
    from .config import dump_config, load_config

    print(dump_config(load_config(resolve_config_path(args.name), args.set)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="dermalens", description=f"Skin-lesion classifiers. {RESEARCH_DISCLAIMER}")
    parser.add_argument("-v", "--verbose", action="store_true", help="INFO logs, and full tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"dermalens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def data_args(p, required=False):
        p.add_argument("--data", required=required, help="dataset path (default: $DERMALENS_DATA)")
        p.add_argument("--format", choices=["auto", "ham10000", "isic2018", "dermamnist", "folder", "synthetic"],
                       help="dataset layout (default: the config's data.format; auto detects it from the path)")

    p = sub.add_parser("train", help="train a model (config + overrides), evaluate it on the test split once",
                       epilog="example: dermalens train --config ham10000_cpu --data ../shared/data/ham10000_224 "
                              "--set training.max_time=00:00:30:00")
    p.add_argument("--config", help="YAML file or name in configs/ (e.g. dermamnist_cpu)")
    data_args(p)
    p.add_argument("--run-dir", help="run folder (default runs/<name>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. training.max_epochs=3")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint: metrics.json + report with figures",
                       epilog="examples: dermalens evaluate --run runs/x   |   dermalens evaluate --checkpoint "
                              "runs/x/checkpoints/best.ckpt --data ISIC2018 --format isic2018 --split test")
    p.add_argument("--run", help="run folder (uses its config, split and best checkpoint)")
    p.add_argument("--checkpoint", help="best | last | path to a .ckpt")
    p.add_argument("--config", help="config for an external data set (with --checkpoint and --data)")
    data_args(p)
    p.add_argument("--split", default=None, choices=["train", "val", "test", "all"],
                   help="the run's own data: test (default), val or train of its split.csv; other data: all "
                        "(default: every image); an ISIC 2018 folder: train/val/test = its official "
                        "Training/Validation/Test set, scored whole")
    p.add_argument("--out", help="output folder (default: <run or checkpoint folder>/eval-<data>-<split>/)")
    p.add_argument("--no-tta", action="store_true", help="no test-time flips")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. evaluation.n_bootstrap=500")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="class probabilities for image files, folders or glob patterns",
                       epilog="example: dermalens predict --model runs/x/checkpoints/best.ckpt photos/ "
                              "-f isic2018 -o submission.csv")
    p.add_argument("--model", required=True, help="checkpoint (.ckpt), model package folder (dermalens package) "
                   "or exported model (.onnx)")
    p.add_argument("images", nargs="+", help="image files, folders (their images) or glob patterns ('x/*.jpg')")
    p.add_argument("--top-k", type=int, default=3, help="classes listed per image (table, csv, json)")
    p.add_argument("--output-format", "-f", choices=["table", "csv", "json", "isic2018"], default="table",
                   help="table; csv (long: image,rank,class,name,probability); json; isic2018 (the ISIC 2018 "
                        "Task 3 submission CSV: image,MEL,NV,BCC,AKIEC,BKL,DF,VASC)")
    p.add_argument("--output", "-o", help="write to this file instead of stdout")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average over flipped views (default: as the model was calibrated)")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto", help=RUNTIME_HELP)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("data", help="validate and summarise a dataset",
                       epilog="example: dermalens data --data ../shared/data/ham10000_224 --check-images")
    data_args(p, required=True)
    p.add_argument("--check-images", action="store_true", help="decode every image to find unreadable ones")
    p.add_argument("--restrict-to-available", action="store_true", help="HAM10000: only rows whose image exists")
    p.add_argument("--issues-csv", help="write the list of bad items here")
    p.add_argument("--strict", action="store_true", help="exit 1 if any issue is found")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("config", help="show a config with every key and its value (defaults filled in)",
                       epilog="example: dermalens config show ham10000_cpu --set model.image_size=192")
    config_sub = p.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the resolved config as YAML")
    show.add_argument("name", nargs="?", help="a shipped config name or a YAML file (default: the defaults only)")
    show.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. training.max_epochs=3")
    show.set_defaults(func=cmd_config_show)

    p = sub.add_parser("demo", help="the main job: train a CPU-sized model, evaluate it, write the report",
                       epilog="example: dermalens demo --data ../shared/data   (trains on ham10000_224 inside it)")
    p.add_argument("--data", help="real data (default $DERMALENS_DATA, else download DermaMNIST, else synthetic); "
                   "a folder holding ham10000_224/ trains on those real images")
    p.add_argument("--config", default=None, help="default: demo (real HAM10000) or demo_dermamnist (thumbnails)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. evaluation.n_bootstrap=500")
    p.set_defaults(func=cmd_demo)

    # Each stage keeps its own subcommand's options beside its code.
    add_explain_subcommand(sub)
    add_serve_subcommand(sub)
    add_export_subcommand(sub)
    add_package_subcommand(sub)
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
    from .config import ConfigError
    from .data.split import LesionLeakageError
    from .data.validation import BadDataError
    from .models.calibration_record import CheckpointError
    from .training.errors import TrainingInterrupted

    try:
        return args.func(args)
    except TrainingInterrupted as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        return 130
    except (ConfigError, BadDataError, CheckpointError, FileNotFoundError, LesionLeakageError, ValueError) as error:
        if args.verbose:   # -v: the whole traceback, for a bug report
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
