"""The `dermalens` command: a thin layer that only parses arguments and wires the pipeline."""
from __future__ import annotations

import argparse
import importlib
import csv
import io
import json
import logging
import os
import sys
from pathlib import Path

from .classes import RESEARCH_DISCLAIMER
from .inference.runtimes import RUNTIME_HELP, RUNTIMES

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def resolve_config_path(name: str | None) -> Path | None:
    """A config path, or a bare name looked up in the repository's configs/ folder."""
    if name is None:
        return None
    path = Path(name)
    if path.is_file():
        return path
    candidate = REPO_CONFIGS / (name if name.endswith(".yaml") else f"{name}.yaml")
    if candidate.is_file():
        return candidate
    raise SystemExit(f"error: config not found: {name} (looked for {path} and {candidate})")


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
        low_high = ci.get(key)
        return f"{value:.3f}" + (f"  [95% CI {low_high[0]:.3f}-{low_high[1]:.3f}]" if low_high else "")

    print(f"\n{metrics.get('split', 'test')} split, {metrics.get('n_samples')} images:")
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "auc_macro", "ece", "brier"):
        if metrics.get(key) is not None:
            print(f"  {key:18s} {fmt(key, metrics[key])}")
    for code in ("mel", "df"):
        f1 = metrics["per_class"][code]["f1"]
        print(f"  {'f1_' + code:18s} {fmt('f1_' + code, f1)}")
    print(f"report: {run_dir / 'report.md'}\n{RESEARCH_DISCLAIMER}")


def cmd_train(args) -> int:
    from .training.run import load_run_config, train

    if args.resume:
        run_dir = Path(args.resume)
        config = load_run_config(run_dir, args.set)
        result = train(config, run_dir, resume=True)
    else:
        config = _config_from_args(args)
        result = train(config, Path(args.run_dir) if args.run_dir else None)
    print(f"run folder: {result.run_dir}\nbest checkpoint: {result.best_checkpoint} "
          f"(trained {result.train_seconds / 60:.1f} min)")
    if result.metrics:
        print_metrics_summary(result.metrics, result.run_dir)
    return 0


def cmd_evaluate(args) -> int:
    from .config import load_config
    from .evaluation.evaluate import evaluate_checkpoint
    from .models.checkpoint import read_checkpoint_metadata

    overrides = list(args.set or [])
    if args.run:
        run_dir = Path(args.run)
        config = load_config(run_dir / "config.yaml", overrides)
        checkpoint = run_dir / "checkpoints" / f"{args.checkpoint or 'best'}.ckpt" \
            if args.checkpoint in (None, "best", "last") else Path(args.checkpoint)
        out_dir = Path(args.out) if args.out else run_dir
    else:
        if not args.checkpoint or not args.data:
            raise SystemExit("error: give --run RUN_DIR, or --checkpoint FILE with --data PATH")
        checkpoint = Path(args.checkpoint)
        meta = read_checkpoint_metadata(checkpoint)["dermalens"]
        config = load_config(resolve_config_path(args.config), overrides)
        config["model"].update(meta["model_config"])
        out_dir = Path(args.out or checkpoint.parent / "evaluation")
        out_dir.mkdir(parents=True, exist_ok=True)
    if args.data:
        config["data"]["path"] = args.data
    if args.format:
        config["data"]["format"] = args.format
    if args.no_tta:
        config["evaluation"]["tta"] = False
    metrics = evaluate_checkpoint(config, checkpoint, out_dir, split=args.split)
    print_metrics_summary(metrics, out_dir)
    return 0


def cmd_predict(args) -> int:
    from .inference.onnx_predictor import load_predictor

    # runtime "auto": ONNX Runtime when an up-to-date <stem>.onnx sits beside the .ckpt
    predictor = load_predictor(args.model, tta=args.tta, runtime=args.runtime)
    failures = []
    rows = []
    for image in args.images:
        try:
            rows.append(predictor.predict([image])[0].to_dict(args.top_k))
        except (ValueError, FileNotFoundError) as error:
            failures.append(str(error))
    out = io.StringIO()
    if args.output_format == "json":
        json.dump({"predictions": rows, "errors": failures, "runtime": predictor.runtime,
                   "disclaimer": RESEARCH_DISCLAIMER}, out, indent=2)
        out.write("\n")
    elif args.output_format == "csv":
        writer = csv.writer(out)
        writer.writerow(["image", "rank", "class", "name", "probability"])
        for row in rows:
            for rank, item in enumerate(row["top_k"], 1):
                writer.writerow([row["image"], rank, item["class"], item["name"], f"{item['probability']:.6f}"])
    else:
        for row in rows:
            out.write(f"{row['image']}\n")
            for rank, item in enumerate(row["top_k"], 1):
                out.write(f"  {rank}. {item['class']:6s} {item['probability']:7.2%}  {item['name']}\n")
        out.write(f"{RESEARCH_DISCLAIMER}\n")
    if args.output:
        from .evaluation.report import atomic_write_text

        atomic_write_text(Path(args.output), out.getvalue())
    else:
        sys.stdout.write(out.getvalue())
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


def cmd_data(args) -> int:
    from .config import load_config
    from .data.validation import find_unreadable_images, format_summary, summarise_dataset, write_issues_csv
    from .training.run import load_dataset

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


def cmd_demo(args) -> int:
    from .config import load_config
    from .data.sources import DatasetUnavailable, download_dermamnist
    from .training.run import train

    overrides = list(args.set or [])
    data = args.data or os.environ.get("DERMALENS_DATA")
    if data:
        print(f"demo data: {data}")
        overrides.append(f"data.path={data}")
    else:
        try:
            path = download_dermamnist(Path(".cache/dermalens"))
            print(f"demo data: DermaMNIST downloaded to {path}")
            overrides.append(f"data.path={path}")
        except DatasetUnavailable as error:
            banner = "=" * 78
            print(f"{banner}\nNO REAL DATA: no --data, no DERMALENS_DATA, and DermaMNIST could not be downloaded\n"
                  f"({error}).\nRunning on a small GENERATED data set that is NOT REAL so the pipeline can be "
                  f"seen end to end.\nIts numbers mean nothing. Give real data with --data PATH.\n{banner}")
            overrides += ["data.format=synthetic", "name=demo-SYNTHETIC-NOT-REAL"]
    config = load_config(resolve_config_path(args.config), overrides)
    result = train(config)
    print(f"run folder: {result.run_dir}")
    if result.metrics:
        print_metrics_summary(result.metrics, result.run_dir)
    print(f"try: dermalens predict --model {result.best_checkpoint} <image.jpg>")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dermalens", description=f"Skin-lesion classifiers. {RESEARCH_DISCLAIMER}")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def data_args(p, required=False):
        p.add_argument("--data", required=required, help="dataset path (default: $DERMALENS_DATA)")
        p.add_argument("--format", choices=["auto", "ham10000", "isic2018", "dermamnist", "folder", "synthetic"])

    p = sub.add_parser("train", help="train a model (config + overrides), evaluate it on the test split once")
    p.add_argument("--config", help="YAML file or name in configs/ (e.g. dermamnist_cpu)")
    data_args(p)
    p.add_argument("--run-dir", help="run folder (default runs/<name>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. training.max_epochs=3")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint: metrics.json + report with figures")
    p.add_argument("--run", help="run folder (uses its config, split and best checkpoint)")
    p.add_argument("--checkpoint", help="best | last | path to a .ckpt")
    p.add_argument("--config", help="config for an external data set (with --checkpoint and --data)")
    data_args(p)
    p.add_argument("--split", default=None, help="test (default) | val | train")
    p.add_argument("--out", help="output folder (default: the run folder)")
    p.add_argument("--no-tta", action="store_true", help="no test-time flips")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="top-k class probabilities for image files")
    p.add_argument("--model", required=True, help="checkpoint (.ckpt) or exported model (.onnx)")
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--output-format", "-f", choices=["table", "csv", "json"], default="table")
    p.add_argument("--output", "-o", help="write to this file instead of stdout")
    p.add_argument("--tta", action="store_true", help="average over flipped views")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto", help=RUNTIME_HELP)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("data", help="validate and summarise a dataset")
    data_args(p, required=True)
    p.add_argument("--check-images", action="store_true", help="decode every image to find unreadable ones")
    p.add_argument("--restrict-to-available", action="store_true", help="HAM10000: only rows whose image exists")
    p.add_argument("--issues-csv", help="write the list of bad items here")
    p.add_argument("--strict", action="store_true", help="exit 1 if any issue is found")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("demo", help="the main job: train a CPU-sized model, evaluate it, write the report")
    p.add_argument("--data", help="real data (default $DERMALENS_DATA, else download DermaMNIST, else synthetic)")
    p.add_argument("--config", default="demo")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_demo)

    # Later pipeline stages register their own subcommands (explain, serve, export).
    for module_name in ("dermalens.explain.cli", "dermalens.serving.cli", "dermalens.inference.export_cli"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        module.add_subcommand(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .config import ConfigError
    from .data.validation import BadDataError
    from .models.checkpoint import CheckpointError

    try:
        return args.func(args)
    except (ConfigError, BadDataError, CheckpointError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # data format problems name the file and field
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
