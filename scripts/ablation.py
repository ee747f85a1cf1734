"""Ablation on the VALIDATION split: CBAM on/off, focal loss vs cross-entropy, balanced sampler on/off.

Each variant is the base config with one change, trained with the same
seed and budget, and scored on the validation split (the test split is
never touched here). Prints a markdown table and writes it with a JSON.

The figures are the raw argmax of each model, uncalibrated: training
otherwise fits a temperature, per-class decision biases and a melanoma
threshold on the validation split, and a rule scored on the images it was
fitted on looks better than it is. So every variant trains with
`evaluation.decision_rule=raw`, `evaluation.melanoma_specificity=null` and
`evaluation.temperature_scaling=false` (whatever --set says): nothing but the
choice of the best epoch (`training.monitor`, as in every run) looks at the
validation labels.

    python scripts/ablation.py --config dermamnist_cpu --data $DERMALENS_DATA \
        --set training.max_epochs=4 --out runs/ablation
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dermalens.cli import resolve_config_path
from dermalens.config import load_config
from dermalens.evaluation.evaluate import evaluate_checkpoint
from dermalens.evaluation.report import atomic_write_json, atomic_write_text
from dermalens.training.run import train

VARIANTS = {
    "base (config as is)": [],
    "CBAM off": ["model.cbam=false"],
    "cross-entropy instead of focal": ["loss.name=cross_entropy"],
    "balanced sampler off (natural stream)": ["sampler.balanced=false"],
}
# Last, after --set: nothing is fitted on the validation split the table is scored on, and the test split is
# not evaluated.
UNFITTED = ["evaluation.after_training=false", "evaluation.decision_rule=raw",
            "evaluation.melanoma_specificity=null", "evaluation.temperature_scaling=false"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="dermamnist_cpu")
    parser.add_argument("--data", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--only", action="append", help="run only these variant names")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, changes in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        overrides = [*args.set, *changes, *UNFITTED]
        # The folder name as given, not read as YAML (a folder named "2024" or "scans #2").
        config = load_config(resolve_config_path(args.config), overrides, {"data": {"path": str(args.data)}})
        run_dir = out / name.split(" ")[0].replace("-", "_").lower()
        if len(changes):
            run_dir = out / changes[0].split("=")[0].replace(".", "_")
        started = time.perf_counter()
        result = train(config, run_dir)
        minutes = (time.perf_counter() - started) / 60
        metrics = evaluate_checkpoint(config, result.best_checkpoint, run_dir, split="val")
        rows.append({"variant": name, "change": " ".join(changes) or "-", "minutes": round(minutes, 1),
                     **{k: metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc_macro")},
                     "f1_mel": metrics["per_class"]["mel"]["f1"], "f1_df": metrics["per_class"]["df"]["f1"],
                     "ci95_balanced_accuracy": metrics["ci95"]["balanced_accuracy"]})
        atomic_write_json(out / "ablation.json", rows)
    header = "| variant | val ACC | val balanced ACC (95% CI) | val macro F1 | val AUC | mel F1 | df F1 | train min |"
    lines = ["Validation split, raw argmax of each model (no temperature, decision rule or melanoma threshold "
             "fitted on it).", "", header, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ci95_balanced_accuracy"]
        lines.append(f"| {r['variant']} | {r['accuracy']:.3f} | {r['balanced_accuracy']:.3f} ({lo:.3f}-{hi:.3f}) | "
                     f"{r['macro_f1']:.3f} | {r['auc_macro']:.3f} | {r['f1_mel']:.3f} | {r['f1_df']:.3f} | {r['minutes']} |")
    table = "\n".join(lines) + "\n"
    atomic_write_text(out / "ablation.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
