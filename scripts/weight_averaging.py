"""Weight averaging or distillation instead of the logit mean: one model's cost, measured on images no member saw.

A cross-validated run (`dermalens train --folds K`) ships its K fold models
as one ensemble, the mean of their logits: K heads on every view, which is
what keeps the ensemble from the speed one model has (docs/performance.md).
Averaging the members' weights instead (a "model soup", Wortsman et al.,
ICML 2022) gives ONE network at one model's cost; fold models fine-tuned
from the same ImageNet weights with the same seed may stay close enough for
that to work. Whether it keeps the ensemble's accuracy cannot be read from a
run's out-of-fold predictions: every pool image was seen by K-1 of the K
members. So this script

1. holds out one outer fold of a finished run (`--fold N`): its images are
   left out, the test split stays test and untouched;
2. trains the run's own recipe on the rest with K-1 folds (the nested run,
   in OUT: K-1 fold models, resumable; a rerun only rescores);
3. scores, on the held-out fold's images (which no nested member saw, with
   the recipe's four flip views through the cached frozen trunk): each
   member alone, their logit mean (the shipped way), their weight average,
   and the weight average with its batch-norm statistics recomputed on the
   members' training images (`torch.optim.swa_utils.update_bn`);
4. with `--students`, also single models trained on the whole nested pool
   (every image the members saw, in one model): with the labels only
   (`0`), and distilled from the nested ensemble (`WEIGHT:TEMPERATURE`,
   Hinton et al. 2015) with its out-of-fold logits as the teacher, so each
   image's soft target comes from a member that never saw it; with
   `--own-rule`, each student also gets a rule of its own, fitted on its own
   out-of-fold logits over the nested pool (one more student per nested
   fold, trained as it is on the pool without that fold), as a student
   shipped in place of the ensemble would be calibrated, since a student's
   probabilities are shaped unlike a fold model's;
5. reports raw argmax figures, the decision rule cross-fitted within the
   held-out fold (5 parts), the rule as a shipped model gets it (temperature,
   biases and melanoma threshold fitted on the nested run's out-of-fold
   logits, then applied to each row's held-out logits), and paired bootstrap
   intervals of each row minus the logit mean (the same images, so much
   tighter than fold-to-fold sd).

    python scripts/weight_averaging.py --run runs/ham10000_cpu --fold 1 --out runs/weight_averaging \
        --students 0 0.5:2
    python scripts/weight_averaging.py --run runs/ham10000_cpu --fold 1 --out runs/weight_averaging \
        --students 0.5:2 --own-rule

Cost: K-1 fold models of the recipe (4 x 6 min for the five-fold CPU recipe
on a 2-core VM, plus the trunk cache when it is not there), one fold model's
time per student (K more with `--own-rule`), then a few minutes of scoring. Results:
OUT/weight_averaging.json, .md and .png; students in OUT/student-*/.
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from dermalens.atomic_io import atomic_write_json, atomic_write_text
from dermalens.config import AugmentationSection, TrainingSection, dump_config, recipe_differences, section
from dermalens.data.prepare import PreparedData, prepare_data
from dermalens.data.split import SPLIT_COLUMNS
from dermalens.evaluation.decision import cross_fitted_decisions
from dermalens.inference.postprocess import DecisionRule, calibrated_probabilities
from dermalens.models.checkpoint import load_classifier, loads_own_checkpoints
from dermalens.models.classifier import LesionClassifier, ModelConfig, create_classifier
from dermalens.models.ensemble import average_weights
from dermalens.run_folder import OUT_OF_FOLD_LOGITS, RunFolder
from dermalens.training.calibrate import fit_calibration
from dermalens.training.cross_validation import summarise, train_folds
from dermalens.training.frozen_trunk import FLIP_VIEWS, TrunkActivations, TrunkSpec
from dermalens.training.held_out_logits import logits_from_trunk
from dermalens.training.run import trunk_cache_dir
from dermalens.training.student import train_student as train_one_student

RULE_PARTS = 5
# Each row's differences from the logit mean, with paired bootstrap intervals: raw argmax, the rule cross-fitted
# within the held-out fold, the rule fitted out of fold (as shipped), and the ranking.
PAIRED_METRICS = ("balanced_accuracy", "rule_balanced_accuracy", "shipped_rule_balanced_accuracy", "auc_macro")
_BATCH = 64


def nested_split(split: pd.DataFrame, fold: int, source: Path) -> pd.DataFrame:
    """The outer run's split without fold `fold`'s images: the other folds are the nested pool, test stays test."""
    if "fold" not in split.columns:
        raise SystemExit(f"{source} has no fold column: --run needs a `dermalens train --folds K` run")
    folds = sorted(int(k) for k in split["fold"].unique() if k > 0)
    if fold not in folds:
        raise SystemExit(f"--fold {fold}: {source} has folds {folds}")
    if len(folds) < 3:
        raise SystemExit(f"{source} has {len(folds)} folds: holding one out leaves too few to cross-validate "
                         f"(at least 3 needed)")
    kept = split[split["fold"] != fold][list(SPLIT_COLUMNS)].copy()
    kept.loc[kept["split"] != "test", "split"] = "train"
    return kept.reset_index(drop=True)


def nested_config(config: dict, folds: int, data: str | None) -> dict:
    """The outer run's recipe on K-1 folds: every epoch trained (no budget shared out), the test split not scored."""
    nested = {name: dict(value) if isinstance(value, dict) else value for name, value in config.items()}
    nested["training"].update(folds=folds - 1, max_time=None)
    nested["evaluation"]["after_training"] = False
    if data:
        nested["data"]["path"] = str(Path(data).expanduser().resolve())
    return nested


def prepare_nested_run(run: Path, fold: int, out: Path, data: str | None) -> tuple[dict, pd.DataFrame]:
    """Write (or check) OUT's config and split; returns the nested config and the held-out fold's rows."""
    outer = RunFolder(run)
    if not outer.cv_file.is_file():
        raise SystemExit(f"{run} is not a finished cross-validated run (no {outer.cv_file.name})")
    split = pd.read_csv(outer.split_file, dtype={"image_id": str, "lesion_id": str}, keep_default_na=False)
    config = outer.read_config([])
    kept = nested_split(split, fold, outer.split_file)
    config = nested_config(config, split.loc[split["fold"] > 0, "fold"].nunique(), data)
    folder = RunFolder(out)
    if folder.config_file.is_file():
        differences = recipe_differences(folder.read_config([]), config, extra_keys=("training.folds", "seed"))
        if differences:
            raise SystemExit(f"{out} holds a nested run of another recipe ({'; '.join(differences)}); "
                             f"choose another --out")
        saved = pd.read_csv(folder.split_file, dtype={"image_id": str}, keep_default_na=False)
        if set(saved["image_id"]) != set(kept["image_id"]):
            raise SystemExit(f"{folder.split_file} holds other images than {run} without fold {fold}; "
                             f"choose another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        kept.to_csv(folder.split_file, index=False)
        atomic_write_text(folder.config_file, dump_config(config))
    return config, split[split["fold"] == fold]


class _FromTrunk(nn.Module):
    """The stages after a frozen trunk, up to the head convolution: every BatchNorm `update_bn` should see.

    Only these are registered, so `update_bn` leaves the trunk's statistics (never run here) alone.
    """

    def __init__(self, model: LesionClassifier, stages: int):
        super().__init__()
        self.stages = nn.ModuleList(model.backbone.blocks[model.check_trunk_stages(stages):])
        self.conv_head, self.bn2 = model.backbone.conv_head, model.backbone.bn2

    def train(self, mode: bool = True) -> "_FromTrunk":
        # update_bn puts its module in train mode: only the BatchNorm layers may follow, or drop-path would
        # thin the network at random and the statistics would be those of random subnetworks (and unrepeatable).
        super().train(False)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.bn2(self.conv_head(x))


def recompute_batchnorm(model: LesionClassifier, activations: TrunkActivations, rows: np.ndarray,
                        seed: int) -> LesionClassifier:
    """A copy of `model` whose BatchNorm statistics after the trunk are those of `rows` (one cached view each,
    flips and augmented views drawn at random, as training saw them)."""
    model = copy.deepcopy(model).eval()
    views = np.random.default_rng(seed).integers(0, activations.spec.views, len(rows))
    batches = [torch.from_numpy(np.stack([np.asarray(activations.array[row][view], dtype=np.float32)
                                          for row, view in zip(rows[start:start + _BATCH], views[start:start + _BATCH])]))
               for start in range(0, len(rows), _BATCH)]
    with torch.no_grad():
        torch.optim.swa_utils.update_bn(batches, _FromTrunk(model, activations.spec.stages))
    return model.eval()


def parse_student(text: str) -> tuple[float, float]:
    """'0' (the labels only) or 'WEIGHT:TEMPERATURE' (distilled) -> (weight, temperature)."""
    weight, _, temperature = text.partition(":")
    try:
        values = float(weight), float(temperature or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give 0 (the labels only) or WEIGHT:TEMPERATURE, e.g. 0.5:2")
    if not 0 <= values[0] <= 1 or values[1] <= 0 or (values[0] > 0 and not temperature):
        raise argparse.ArgumentTypeError(f"{text!r}: the weight must be in [0, 1] and a distilled student needs a "
                                         f"positive temperature, e.g. 0.5:2")
    return values


def student_name(weight: float, temperature: float) -> str:
    return "one model, whole pool, labels only" if weight == 0 else \
        f"one model, whole pool, distilled (weight {weight:g}, T {temperature:g})"


def student_folder(nested: RunFolder, weight: float, temperature: float, without_fold: int | None = None) -> RunFolder:
    name = "student-labels-only" if weight == 0 else f"student-w{weight:g}-t{temperature:g}"
    return RunFolder(nested.path / (name if without_fold is None else f"{name}-without-fold-{without_fold}"))


def train_student(config: dict, folder: RunFolder, prepared: PreparedData, out_of_fold: np.ndarray, weight: float,
                  temperature: float, progress: bool, left_out: np.ndarray | None = None) -> tuple[Path, float]:
    """One model of the recipe on every nested pool image but `left_out` (pool rows; no validation split: nothing
    is chosen on one), with the nested ensemble's out-of-fold logits as its teacher when `weight` > 0.
    Resumable; returns its checkpoint and training minutes."""
    teacher = np.full((len(prepared.labels), len(prepared.classes)), np.nan, dtype=np.float32)
    teacher[prepared.rows("train")] = out_of_fold
    student = copy.deepcopy(config)
    student["training"].update(distillation_weight=weight, distillation_temperature=temperature)
    logging.info("training %s (%s)", student_name(weight, temperature), folder.path.name)
    checkpoint, seconds = train_one_student(student, folder, prepared, teacher, left_out=left_out, progress=progress)
    return checkpoint, round(seconds / 60, 1)


def nested_folds(nested: RunFolder, prepared: PreparedData, rows: np.ndarray) -> np.ndarray:
    """The nested run's fold (1..K-1) of each of `rows`, from its split.csv."""
    split = pd.read_csv(nested.split_file, dtype={"image_id": str}, keep_default_na=False)
    fold_of = dict(zip(split["image_id"], split["fold"]))
    return np.array([int(fold_of[image_id]) for image_id in prepared.dataset.records["image_id"].to_numpy()[rows]])


def student_out_of_fold(config: dict, nested: RunFolder, prepared: PreparedData, out_of_fold: np.ndarray,
                        weight: float, temperature: float, activations: TrunkActivations,
                        progress: bool) -> tuple[np.ndarray, float]:
    """The student's own out-of-fold logits over the nested pool: one student per nested fold, trained as the
    shipped student is on the pool without that fold, scores it (the recipe's four flip views). What a student
    shipped with its own calibration would fit its temperature, biases and melanoma threshold on, as `train
    --folds K` fits the ensemble's on its members' out-of-fold logits. Returns the logits and the minutes."""
    pool = prepared.rows("train")
    folds = nested_folds(nested, prepared, pool)
    logits, minutes = np.full((len(pool), len(prepared.classes)), np.nan, dtype=np.float32), 0.0
    for fold in sorted(set(folds)):
        checkpoint, spent = train_student(config, student_folder(nested, weight, temperature, fold), prepared,
                                          out_of_fold, weight, temperature, progress, left_out=pool[folds == fold])
        logits[folds == fold] = logits_from_trunk(load_classifier(checkpoint)[0], activations, pool[folds == fold],
                                                  range(FLIP_VIEWS))
        minutes += spent
    return logits, round(minutes, 1)


def out_of_fold_rule(logits: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                     evaluation: dict) -> tuple[float, DecisionRule]:
    """Temperature and decision rule (biases, melanoma threshold) fitted on out-of-fold logits with the recipe's
    evaluation settings, as `train --folds K` fits the shipped ensemble's."""
    temperature, rule, _ = fit_calibration(logits, labels, classes, evaluation,
                                           "the nested run's out-of-fold predictions")
    return temperature, rule


def score(logits: np.ndarray, labels: np.ndarray, classes: Sequence[str], parts: np.ndarray,
          shipped: tuple[float, DecisionRule]) -> dict:
    """Raw argmax figures, the balanced-accuracy rule cross-fitted over `parts` of the held-out images, and the
    `shipped` (temperature, rule) fitted out of fold: its balanced accuracy, accuracy and melanoma flag."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    probabilities = calibrated_probabilities(logits)
    decided = cross_fitted_decisions(probabilities, labels, parts, classes)
    temperature, rule = shipped
    shipped_probabilities = calibrated_probabilities(logits, temperature)
    shipped_decisions = rule.decide(shipped_probabilities)
    melanoma = list(classes).index("mel")
    # A recipe without a melanoma operating point (evaluation.melanoma_specificity: null) gets NaN flag figures
    flagged = (shipped_probabilities[:, melanoma] >= rule.melanoma.threshold if rule.melanoma
               else np.full(len(labels), np.nan))
    return {**summarise(probabilities, labels, classes),
            "rule_balanced_accuracy": float(balanced_accuracy_score(labels, decided)),
            "rule_accuracy": float(accuracy_score(labels, decided)), "decisions": decided,
            "shipped_rule_balanced_accuracy": float(balanced_accuracy_score(labels, shipped_decisions)),
            "shipped_rule_accuracy": float(accuracy_score(labels, shipped_decisions)),
            "shipped_decisions": shipped_decisions,
            "mel_flag_sensitivity": float(flagged[labels == melanoma].mean()),
            "mel_flag_specificity": float(1 - flagged[labels != melanoma].mean())}


def paired_intervals(row: dict, reference: dict, logits: np.ndarray, reference_logits: np.ndarray,
                     labels: np.ndarray, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """95% paired bootstrap intervals of row minus reference: the same resampled images for both, resampled
    within each class (stratified), so every resample holds every class and has a macro AUC."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    rng = np.random.default_rng(seed)
    p, q = calibrated_probabilities(logits), calibrated_probabilities(reference_logits)
    classes = np.arange(p.shape[1])
    by_class = [np.flatnonzero(labels == c) for c in classes if np.any(labels == c)]
    differences = {key: [] for key in PAIRED_METRICS}
    for _ in range(n_bootstrap):
        pick = np.concatenate([rng.choice(members, len(members)) for members in by_class])
        y = labels[pick]
        differences["balanced_accuracy"].append(balanced_accuracy_score(y, p[pick].argmax(1))
                                                - balanced_accuracy_score(y, q[pick].argmax(1)))
        differences["rule_balanced_accuracy"].append(balanced_accuracy_score(y, row["decisions"][pick])
                                                     - balanced_accuracy_score(y, reference["decisions"][pick]))
        differences["shipped_rule_balanced_accuracy"].append(
            balanced_accuracy_score(y, row["shipped_decisions"][pick])
            - balanced_accuracy_score(y, reference["shipped_decisions"][pick]))
        if len(by_class) == len(classes):
            differences["auc_macro"].append(roc_auc_score(y, p[pick], multi_class="ovr", labels=classes)
                                            - roc_auc_score(y, q[pick], multi_class="ovr", labels=classes))
    return {key: [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
            for key, values in differences.items() if values}


def markdown(result: dict) -> str:
    lines = [f"Held-out fold {result['fold']} of {result['run']} ({result['images']} images, no nested member saw "
             f"them); {result['members']} nested fold models, trained in "
             f"{' + '.join(f'{m:.1f}' for m in result['fold_minutes'])} min"
             + "".join(f"; {name}: {minutes:.1f} min" for name, minutes in result.get("student_minutes", {}).items())
             + ".", "",
             "| model | bal. acc. | acc. | macro AUC | mel sens@80 | rule bal. acc. / acc. | rule fitted out of fold: "
             "bal. acc. / acc. / mel flag sens. / spec. | minus logit mean: bal. acc. / rule / rule fitted out of fold "
             "/ AUC (95% paired CI) "
             "| heads per view |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        ci = row.get("paired_ci")
        paired = "reference" if ci is None else " / ".join(
            f"{row['delta'][k]:+.3f} ({ci[k][0]:+.3f} to {ci[k][1]:+.3f})" if k in ci else f"{row['delta'][k]:+.3f}"
            for k in PAIRED_METRICS)
        lines.append(f"| {row['model']} | {row['balanced_accuracy']:.3f} | {row['accuracy']:.3f} | "
                     f"{row['auc_macro']:.3f} | {row['mel_sensitivity_at_80_specificity']:.3f} | "
                     f"{row['rule_balanced_accuracy']:.3f} / {row['rule_accuracy']:.3f} | "
                     f"{row['shipped_rule_balanced_accuracy']:.3f} / {row['shipped_rule_accuracy']:.3f} / "
                     f"{row['mel_flag_sensitivity']:.3f} / {row['mel_flag_specificity']:.3f} | {paired} | "
                     f"{row['heads']} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("balanced_accuracy", "bal. acc."), ("rule_balanced_accuracy", "rule bal. acc."),
            ("accuracy", "accuracy"), ("auc_macro", "macro AUC")]
    rows = result["rows"]
    figure, axis = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(rows)
    for k, row in enumerate(rows):
        axis.bar(np.arange(len(keys)) + k * width, [row[key] for key, _ in keys], width, label=row["model"])
    axis.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, [name for _, name in keys])
    axis.set_ylim(0.5, 1.0)
    axis.legend(fontsize=7, ncol=2)
    axis.set_title(f"Held-out fold {result['fold']} ({result['images']} images): one model vs the logit mean",
                   fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


@loads_own_checkpoints   # it trains the models it then loads
def measure(run: Path, fold: int, out: Path, data: str | None, progress: bool, n_bootstrap: int = 1000,
            students: Sequence[tuple[float, float]] = (), own_rule: bool = False) -> dict:
    config, held_out = prepare_nested_run(run, fold, out, data)
    started = time.perf_counter()
    nested = RunFolder(out)
    if nested.read_status().get("state") != "finished":
        train_folds(config, out, resume=True, progress=progress)
    config = nested.read_config([])
    members = [nested.fold(k).checkpoint("best") for k in range(1, config["training"]["folds"] + 1)]
    fold_minutes = [round(float(nested.fold(k).read_status().get("train_seconds", 0.0)) / 60, 1)
                    for k in range(1, len(members) + 1)]
    logging.info("nested run ready (%.1f min here); scoring held-out fold %d", (time.perf_counter() - started) / 60,
                 fold)

    prepared = prepare_data(config, out, progress=progress)
    ids = prepared.dataset.records["image_id"]
    rows = np.flatnonzero(ids.isin(set(held_out["image_id"])).to_numpy())
    if len(rows) != len(held_out):
        raise SystemExit(f"{len(held_out) - len(rows)} images of fold {fold} are not in {config['data']['path']}; "
                         f"give the data the run was trained on (--data)")
    training_rows = prepared.rows("train")
    training = section(TrainingSection, config["training"])
    shape_model = create_classifier(ModelConfig(**{**config["model"], "num_classes": len(prepared.classes)}))
    activations = TrunkActivations(shape_model, prepared.images,
                                   TrunkSpec(training.freeze_stages, training.cached_views, config["seed"]),
                                   section(AugmentationSection, config["augmentation"]),
                                   cache_dir=trunk_cache_dir(config), progress=progress)
    activations.ensure(rows, range(FLIP_VIEWS))
    activations.ensure(training_rows, range(activations.spec.views))
    labels, classes = prepared.labels[rows], list(prepared.classes)
    parts = np.random.default_rng(config["seed"]).integers(0, RULE_PARTS, len(rows))
    out_of_fold = np.load(out / OUT_OF_FOLD_LOGITS)
    if len(out_of_fold) != len(training_rows):
        raise SystemExit(f"{out / OUT_OF_FOLD_LOGITS} holds {len(out_of_fold)} rows for {len(training_rows)} pool "
                         f"images: the nested run and its data disagree")
    shipped = out_of_fold_rule(out_of_fold, prepared.labels[training_rows], classes, config["evaluation"])

    models = [load_classifier(path)[0] for path in members]
    table, logits_of = [], {}

    def add(name: str, heads: int, logits: np.ndarray, rule: tuple[float, DecisionRule] = shipped) -> None:
        logits_of[name] = logits
        table.append({"model": name, "heads": heads, **score(logits, labels, classes, parts, rule)})

    flips = range(FLIP_VIEWS)
    member_logits = [logits_from_trunk(model, activations, rows, flips) for model in models]
    for k, logits in enumerate(member_logits):
        add(f"member {k + 1} alone", 1, logits)
    add("logit mean (shipped)", len(models), np.mean(member_logits, axis=0))
    soup = average_weights(models)
    add("weight average", 1, logits_from_trunk(soup, activations, rows, flips))
    recomputed = recompute_batchnorm(soup, activations, training_rows, config["seed"])
    add("weight average, BN recomputed", 1, logits_from_trunk(recomputed, activations, rows, flips))
    student_minutes = {}
    for weight, temperature in students:
        name = student_name(weight, temperature)
        checkpoint, student_minutes[name] = train_student(config, student_folder(nested, weight, temperature),
                                                          prepared, out_of_fold, weight, temperature, progress)
        student_logits = logits_from_trunk(load_classifier(checkpoint)[0], activations, rows, flips)
        add(name, 1, student_logits)
        if own_rule:
            own_out_of_fold, student_minutes[f"{name}: its out-of-fold students"] = student_out_of_fold(
                config, nested, prepared, out_of_fold, weight, temperature, activations, progress)
            own = out_of_fold_rule(own_out_of_fold, prepared.labels[training_rows], classes, config["evaluation"])
            add(f"{name}, rule fitted on its own out-of-fold", 1, student_logits, own)

    reference = next(row for row in table if row["model"] == "logit mean (shipped)")
    for row in table:
        if row is not reference:
            row["delta"] = {key: row[key] - reference[key]
                            for key in PAIRED_METRICS}
            row["paired_ci"] = paired_intervals(row, reference, logits_of[row["model"]],
                                                logits_of[reference["model"]], labels, n_bootstrap, config["seed"])
    for row in table:
        row.pop("decisions")
        row.pop("shipped_decisions")
        row.pop("recall", None)
    return {"run": str(run), "fold": fold, "images": int(len(rows)), "members": len(models),
            "fold_minutes": fold_minutes, "student_minutes": student_minutes, "nested_run": str(out), "rows": table}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: python scripts/weight_averaging.py --run runs/ham10000_cpu "
                                            "--fold 1 --out runs/weight_averaging")
    parser.add_argument("--run", required=True, help="a finished `dermalens train --folds K` run folder (K >= 3)")
    parser.add_argument("--fold", type=int, default=1, help="the outer fold held out (default 1)")
    parser.add_argument("--out", required=True, help="folder of the nested run and the results")
    parser.add_argument("--data", help="the images, when not where the run's config says")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="paired bootstrap resamples for the intervals (default 1000)")
    parser.add_argument("--students", nargs="+", type=parse_student, default=[], metavar="SPEC",
                        help="single models trained on the whole nested pool: 0 = the labels only, WEIGHT:TEMPERATURE "
                             "= distilled from the nested ensemble's out-of-fold logits (e.g. 0 0.5:2)")
    parser.add_argument("--own-rule", action="store_true",
                        help="also fit each student's own rule (temperature, biases, melanoma threshold) on its own "
                             "out-of-fold logits: one more student per nested fold")
    args = parser.parse_args(argv)
    if args.own_rule and not args.students:
        parser.error("--own-rule needs --students")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out).expanduser().resolve()
    result = measure(Path(args.run).expanduser().resolve(), args.fold, out, args.data, progress=sys.stderr.isatty(),
                     n_bootstrap=args.bootstrap, students=args.students, own_rule=args.own_rule)
    result.update(run=args.run, nested_run=args.out)   # as given: the results name no machine's folders
    atomic_write_json(out / "weight_averaging.json", result)
    atomic_write_text(out / "weight_averaging.md", markdown(result))
    plot(result, out / "weight_averaging.png")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
