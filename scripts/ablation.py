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

A rerun with the same OUT goes on where the last one stopped: a finished
variant's folder is read back, an interrupted one resumed from its last
checkpoint; a folder trained with other settings is refused.

    python scripts/ablation.py --config dermamnist_cpu --data $DERMALENS_DATA \
        --set training.max_epochs=4 --out runs/ablation
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dermalens.cli import resolve_config_path
from dermalens.config import ConfigError, load_config
from dermalens.evaluation.evaluate import evaluate_checkpoint
from dermalens.evaluation.report import atomic_write_json, atomic_write_text
from dermalens.models.checkpoint import loads_own_checkpoints
from dermalens.run_folder import RunFolder
from dermalens.training.job import folder_settings_differences
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


def variant_folder(out: Path, name: str, changes: list[str]) -> Path:
    """OUT/base for the config as is, else OUT/<the changed key> (model_cbam, loss_name, ...)."""
    if changes:
        return out / changes[0].split("=")[0].replace(".", "_")
    return out / name.split(" ")[0].replace("-", "_").lower()


@loads_own_checkpoints   # it trains the models it then loads
def validation_metrics(config: dict, run_dir: Path) -> tuple[dict, float]:
    """A variant's validation metrics and training seconds. A rerun goes on where the last one stopped: a
    finished variant is read back, an interrupted one resumed from its last checkpoint (a fresh start in
    its folder was refused: "already holds checkpoints")."""
    folder = RunFolder(run_dir)
    # Scored with a decision rule fitted on the validation split (an older ablation, which records no such
    # setting: compared as unset), or trained with other settings (another ablation writing to this OUT): not
    # this variant's figures.
    differences = folder_settings_differences(run_dir, config, ignore_unrecorded=False,
                                              extra_keys=("seed", "data.val_fraction", "data.test_fraction",
                                                          *(item.split("=")[0] for item in UNFITTED)))
    if differences:
        raise SystemExit(f"error: {run_dir} holds a variant trained with other settings "
                         f"({'; '.join(differences)}); use another --out or remove that folder")
    status = folder.read_status()
    if status.get("state") == "finished":
        seconds = float(status.get("train_seconds", 0.0))
        if folder.metrics_file.is_file():
            metrics = json.loads(folder.metrics_file.read_text())
            if metrics.get("split") == "val":
                print(f"{run_dir}: finished earlier, its validation metrics reused", file=sys.stderr)
                return metrics, seconds
        best = folder.recorded_best_checkpoint(status)   # trained, stopped before its evaluation
    else:
        result = train(config, run_dir, resume=folder.has_checkpoints() or bool(status.get("training_done")))
        best, seconds = result.best_checkpoint, result.train_seconds
    return evaluate_checkpoint(config, best, run_dir, split="val"), seconds


def interval(bounds) -> str:
    """' (lo-hi)', or ' (n/a)' without a bootstrap (evaluation.n_bootstrap=0)."""
    if not bounds or None in bounds:
        return " (n/a)"
    return f" ({bounds[0]:.3f}-{bounds[1]:.3f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="dermamnist_cpu")
    parser.add_argument("--data", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--only", action="append", help="run only these variant names")
    args = parser.parse_args(argv)
    unknown = [name for name in args.only or [] if name not in VARIANTS]
    if unknown:
        parser.error(f"--only {', '.join(map(repr, unknown))}: no such variant; the variants are "
                     f"{', '.join(map(repr, VARIANTS))}")
    try:
        # Every variant's config is checked before the first one trains (a typo in --set fails at once).
        configs = {name: load_config(resolve_config_path(args.config), [*args.set, *changes, *UNFITTED],
                                     # The folder name as given, not read as YAML (a folder named "scans #2").
                                     {"data": {"path": str(args.data)}})
                   for name, changes in VARIANTS.items() if not args.only or name in args.only}
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, config in configs.items():
        changes = VARIANTS[name]
        try:
            metrics, seconds = validation_metrics(config, variant_folder(out, name, changes))
        except ConfigError as error:   # a folder that can be neither reused nor resumed, said why
            print(f"error: {error}", file=sys.stderr)
            return 2
        rows.append({"variant": name, "change": " ".join(changes) or "-", "minutes": round(seconds / 60, 1),
                     **{k: metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc_macro")},
                     "f1_mel": metrics["per_class"]["mel"]["f1"], "f1_df": metrics["per_class"]["df"]["f1"],
                     "ci95_balanced_accuracy": (metrics.get("ci95") or {}).get("balanced_accuracy")})
        atomic_write_json(out / "ablation.json", rows)
    header = "| variant | val ACC | val balanced ACC (95% CI) | val macro F1 | val AUC | mel F1 | df F1 | train min |"
    lines = ["Validation split, raw argmax of each model (no temperature, decision rule or melanoma threshold "
             "fitted on it).", "", header, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['accuracy']:.3f} | {r['balanced_accuracy']:.3f}"
                     f"{interval(r['ci95_balanced_accuracy'])} | {r['macro_f1']:.3f} | {r['auc_macro']:.3f} | "
                     f"{r['f1_mel']:.3f} | {r['f1_df']:.3f} | {r['minutes']} |")
    table = "\n".join(lines) + "\n"
    atomic_write_text(out / "ablation.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
