"""Compare training recipes by lesion-grouped cross-validation, never by the test split.

Each variant is a config plus `--set` overrides; each is trained as K fold
models (`training.folds`, no ensemble, no test evaluation) on the train + val
pool of the config's split, and scored on its out-of-fold predictions: every
pool image predicted once by a model that never saw its lesion. The table
gives those figures, the mean and sd of the folds' balanced accuracy, and
the wall time, and what the decision rule shipped with a model adds: per-class
biases cross-fitted over the folds (fitted on the other folds' out-of-fold
predictions, applied to this fold's), so the rule too is scored on
predictions it was not fitted on. A variant whose folder already holds
cv.json is not rerun, so an interrupted comparison continues where it
stopped (a folder trained with other settings or on other data is refused,
not reused); `--existing-only` renders the table from the variants already
trained and trains nothing.

    python scripts/compare_recipes.py --config ham10000_cpu --data $DERMALENS_DATA/ham10000_224 \\
        --out runs/compare --folds 3 \\
        --variant "base" \\
        --variant "sqrt-sampling: sampler.power=0.5" \\
        --variant "4 frozen stages: training.freeze_stages=4"

Results: OUT/comparison.json and OUT/comparison.md (a markdown table).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from dermalens.atomic_io import atomic_write_json, atomic_write_text
from dermalens.config import ConfigError, load_config
from dermalens.config_files import resolve_config_path
from dermalens.evaluation.decision import cross_fitted_decisions
from dermalens.inference.postprocess import calibrated_probabilities
from dermalens.run_folder import CONFIG_FILE, CV_FILE, OUT_OF_FOLD_LOGITS
from dermalens.training.calibrate import fitted_temperature
from dermalens.training.cross_validation import mean_and_sd, summarise, train_folds
from dermalens.training.job import folder_settings_differences

COLUMNS = (("balanced_accuracy", "OOF bal. acc."), ("accuracy", "OOF acc."), ("auc_macro", "OOF macro AUC"),
           ("mel_sensitivity_at_80_specificity", "OOF mel sens. @80% spec."))


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'name: a.b=1, c.d=2' -> ('name', ['a.b=1', 'c.d=2']); 'name' alone has no overrides."""
    name, _, rest = text.partition(":")
    overrides = [part.strip() for part in rest.split(",") if part.strip()]
    return name.strip(), overrides


def read_out_of_fold(folder: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """A cross-validated run's pool rows (split.csv rows with a fold) and their saved out-of-fold logits, in order."""
    split = pd.read_csv(folder / "split.csv", dtype={"image_id": str})
    return split[split["fold"] > 0], np.load(folder / OUT_OF_FOLD_LOGITS)


def cross_fitted_rule(pool: pd.DataFrame, logits: np.ndarray, classes: list[str],
                      accuracy_tolerance: float = 0.0) -> dict:
    """Balanced accuracy and accuracy of out-of-fold predictions under the cross-fitted decision rule
    (biases that may lower accuracy by at most `accuracy_tolerance`; 0 is the shipped rule)."""
    labels, folds = pool["label"].to_numpy(), pool["fold"].to_numpy()
    if len(logits) != len(labels) or len(np.unique(folds)) < 2:
        return {}
    # Temperature and biases both fitted on the other folds: a temperature fitted on every fold's labels
    # let each fold's own labels move its decisions.
    decided = cross_fitted_decisions(logits, labels, folds, classes, accuracy_tolerance, logits=True)
    return {"balanced_accuracy": float(balanced_accuracy_score(labels, decided)),
            "accuracy": float(accuracy_score(labels, decided))}


def rule_figures(folder: Path, classes: list[str]) -> dict:
    """The shipped rule's figures on a cross-validated run folder's saved out-of-fold predictions."""
    return cross_fitted_rule(*read_out_of_fold(folder), classes)


def reference_row(text: str, folds: int, first_folds: int | None, rule_tolerances: Sequence[float] = ()) -> dict:
    """'NAME=RUN': a finished cross-validated run as a row, over its first `first_folds` folds (all without).

    `rule_tolerances`: what a decision rule allowed to give up that much
    accuracy reaches on the run's out-of-fold predictions (all its folds,
    cross-fitted): how far the rule alone could move balanced accuracy.
    """
    name, _, run = text.rpartition("=")
    folder = Path(run).expanduser()
    missing = [f for f in ("split.csv", CV_FILE, OUT_OF_FOLD_LOGITS, CONFIG_FILE) if not (folder / f).is_file()]
    if not name or missing:
        raise SystemExit(f"--reference {text!r}: expected NAME=RUN, RUN a finished cross-validated run folder"
                         + (f"; {folder} has no {', '.join(missing)}" if name and missing else ""))
    summary = json.loads((folder / CV_FILE).read_text())
    config = load_config(folder / CONFIG_FILE)
    classes = list(config["data"]["classes"])
    run_folds = int(config["training"]["folds"])
    if run_folds != folds:
        raise SystemExit(f"--reference {text!r}: that run has {run_folds} folds, this comparison {folds}; "
                         "its folds would not be the variants' folds")
    pool, logits = read_out_of_fold(folder)
    if len(logits) != len(pool):
        raise SystemExit(f"--reference {text!r}: {len(logits)} out-of-fold logits for {len(pool)} pool images")
    kept = (pool["fold"] <= first_folds).to_numpy() if first_folds else np.ones(len(pool), dtype=bool)
    labels = pool["label"].to_numpy()[kept]
    # At the temperature the run's model ships with (cv.json's), fitted again on the folds kept.
    probabilities = calibrated_probabilities(logits[kept], fitted_temperature(logits[kept], labels,
                                                                              config["evaluation"]))
    per_fold = [f for f in summary["folds"] if not first_folds or f["fold"] <= first_folds]
    kept_folds = len(np.unique(pool["fold"].to_numpy()[kept]))
    # Each tolerance cross-fitted once: tolerance 0 is also the rule column when every fold is kept.
    wanted = [*rule_tolerances, *([0.0] if kept_folds == run_folds else [])]
    rules = {t: cross_fitted_rule(pool, logits, classes, t) for t in dict.fromkeys(wanted)}
    return {"variant": name, "overrides": [f"finished run {folder.name}"], "folds": folds,
            "folds_trained": kept_folds, "out_of_fold": summarise(probabilities, labels, classes),
            "with_rule": rules[0.0] if kept_folds == run_folds else {},
            "mean_sd": mean_and_sd(per_fold), "train_seconds": None, "trunk_seconds": None, "folder": str(folder),
            "rule_headroom": [{"accuracy_tolerance": t, **rules[t]} for t in rule_tolerances]}


def variant_config(config_name: str, data: str, base_overrides: list[str], overrides: list[str],
                   folds: int) -> dict:
    """A variant's config: the config, --set, K folds without an ensemble, then its own overrides
    (ConfigError for a key, value or --folds it cannot take)."""
    if folds < 2:
        raise ConfigError(f"--folds must be 2 or more (the variants are scored out of fold), got {folds}")
    return load_config(resolve_config_path(config_name),
                       [*base_overrides, f"training.folds={folds}", "training.ensemble=false", *overrides],
                       {"data": {"path": str(data)}})   # the folder name as given, not read as YAML


def run_variant(config_name: str, data: str, base_overrides: list[str], name: str, overrides: list[str],
                folds: int, out: Path, first_folds: int | None = None, existing_only: bool = False) -> dict | None:
    folder = out / name.replace(" ", "_").replace("/", "-")
    config = variant_config(config_name, data, base_overrides, overrides, folds)
    # A variant folder is reused, finished or not; one trained with other settings (another comparison that
    # wrote to the same OUT) must not pass for this variant.
    differences = folder_settings_differences(folder, config, extra_keys=("training.folds", "data.test_fraction", "seed"))
    if differences:
        raise SystemExit(f"error: {folder} holds variant {name!r} trained with other settings "
                         f"({'; '.join(differences)}); use another --out or remove that folder")
    if (folder / CV_FILE).is_file():
        summary = json.loads((folder / CV_FILE).read_text())
    elif existing_only:
        return None
    else:
        started = time.perf_counter()
        summary = train_folds(config, folder, resume=folder.exists(), progress=sys.stderr.isatty(),
                              first_folds=first_folds).summary
        summary["wall_seconds"] = round(time.perf_counter() - started, 1)
        atomic_write_json(folder / CV_FILE, summary)
    classes = list(summary["out_of_fold"].get("recall", {})) or \
        ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    return {"variant": name, "overrides": overrides, "folds": folds,
            "folds_trained": summary.get("folds_trained", folds), "out_of_fold": summary["out_of_fold"],
            "with_rule": rule_figures(folder, classes),
            "mean_sd": summary["mean_sd"], "train_seconds": summary["train_seconds"],
            "trunk_seconds": summary.get("trunk_seconds", 0.0), "folder": str(folder)}


def table_line(row: dict) -> str:
    """One variant's row of the comparison table."""
    oof, spread = row["out_of_fold"], row["mean_sd"].get("balanced_accuracy", {})
    cells = [row["variant"], ", ".join(f"`{o}`" for o in row["overrides"]) or "-",
             f"{row.get('folds_trained', row['folds'])} of {row['folds']}"]
    cells += [f"{oof[key]:.3f}" if oof.get(key) is not None else "n/a" for key, _ in COLUMNS]
    cells.append(f"{spread.get('mean', float('nan')):.3f} ± {spread.get('sd', float('nan')):.3f}")
    rule = row.get("with_rule") or {}
    cells.append(f"{rule['balanced_accuracy']:.3f} / {rule['accuracy']:.3f}" if rule else "n/a")
    cells.append("see its run" if row["train_seconds"] is None else
                 f"{row['train_seconds'] / 60:.1f} ({row['trunk_seconds'] / 60:.1f})")
    return "| " + " | ".join(cells) + " |"


def markdown(rows: list[dict], command: str) -> str:
    header = ["variant", "overrides", "folds trained", *[label for _, label in COLUMNS],
              "bal. acc. per fold (mean ± sd)", "bal. acc. / acc. with the rule (cross-fitted)",
              "minutes (trunk cache)"]
    lines = [f"`{command}`", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [table_line(row) for row in rows]
    for row in rows:
        if row.get("rule_headroom"):
            lines += ["", f"Decision rule on {row['variant']}'s out-of-fold predictions (all its folds, cross-fitted), "
                      "by the accuracy it may give up:", "",
                      "| accuracy it may give up | bal. acc. | acc. |", "|---|---|---|"]
            lines += [f"| {h['accuracy_tolerance']:g} | {h['balanced_accuracy']:.3f} | {h['accuracy']:.3f} |"
                      for h in row["rule_headroom"] if h.get("balanced_accuracy") is not None]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a shipped config name or a YAML file")
    parser.add_argument("--data", required=True, help="the data set (its split's test part is never used)")
    parser.add_argument("--out", required=True, type=Path, help="one folder per variant, and the table")
    parser.add_argument("--folds", type=int, default=3, help="lesion-grouped folds of every variant (default 3; "
                        "a --reference run must have as many)")
    parser.add_argument("--first-folds", type=int, help="train only the first N folds of each variant (cheaper, "
                        "noisier: the table says how many)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for every variant")
    parser.add_argument("--variant", action="append", default=[], metavar="'NAME: KEY=VALUE, ...'")
    parser.add_argument("--reference", action="append", default=[], metavar="NAME=RUN",
                        help="a finished cross-validated run as a row (its first --first-folds folds), not retrained")
    parser.add_argument("--rule-headroom", type=float, nargs="+", default=[], metavar="TOLERANCE",
                        help="for each --reference run: the cross-fitted decision rule's balanced accuracy and "
                        "accuracy when it may lower accuracy by each TOLERANCE (0 = the shipped rule)")
    parser.add_argument("--existing-only", action="store_true",
                        help="train nothing: the table of the variants OUT already holds")
    args = parser.parse_args(argv)
    if not args.variant and not args.reference:
        parser.error("name at least one --variant or --reference")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    variants = [parse_variant(text) for text in args.variant]
    try:
        # Every variant's config is built before the first one trains: a typo in the last --variant (or in --set,
        # or --folds 1) fails now, not after hours of training. Without variants, --config, --set and --folds
        # alone; with them, only as each variant completes them (a --set may need a variant's settings).
        try:
            variant_config(args.config, args.data, args.set, [], args.folds)
            alone = None
        except ConfigError as error:   # --config, --set or --folds, unless the variants' settings mend it
            alone = error
        if alone is not None and not variants:
            raise alone
        for name, overrides in variants:
            try:
                variant_config(args.config, args.data, args.set, overrides, args.folds)
            except ConfigError as error:
                if alone is not None and str(error) == str(alone):
                    raise alone from None   # not this variant's doing: named as --config's or --set's own
                raise ConfigError(f"--variant {name!r}: {error}") from None
    except (ConfigError, yaml.YAMLError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python scripts/compare_recipes.py " + " ".join(
        f"'{a}'" if " " in a else a for a in (argv if argv is not None else sys.argv[1:]))

    def write(rows: list[dict]) -> None:
        atomic_write_json(args.out / "comparison.json", rows)
        atomic_write_text(args.out / "comparison.md", markdown(rows, command))
        print(table_line(rows[-1]), flush=True)

    rows = []
    try:
        for text in args.reference:
            rows.append(reference_row(text, args.folds, args.first_folds, args.rule_headroom))
            write(rows)
        for name, overrides in variants:
            row = run_variant(args.config, args.data, args.set, name, overrides, args.folds, args.out,
                              args.first_folds, args.existing_only)
            if row is None:
                print(f"{name}: not trained yet, left out (--existing-only)", flush=True)
                continue
            rows.append(row)
            write(rows)
    except ConfigError as error:   # a reference run's config, a folder that cannot be resumed: said, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
