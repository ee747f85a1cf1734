"""Does the recipe hold on a clinic and device it never saw? Leave-one-source-out against in-source.

HAM10000's `dataset` column names the source of every image (rosendahl,
vidir_modern, vidir_molemax, vienna_dias: clinics and dermatoscopes). For
each source S the same recipe and budget are trained twice over:

- in-source: K-fold cross-validation over ALL images (lesion-grouped, no test
  split); each image of S is predicted by a fold model that trained on other
  lesions, S's own included;
- out-of-source: one model trained on the other sources only (val drawn from
  them), scored on every image of S (`data.test_sources`).

Both are scored on the same images of S with the argmax of the calibrated
probabilities, over the classes S has at least MIN_IMAGES images of (a class
with two images in a source says little). The gap is out-of-source minus
in-source.

A source can hold most lesions of a class (rosendahl: almost every akiec of
HAM10000), so the model trained without it meets that class a few times: its
gap then mixes an unseen device with an unseen class. Each class's recall is
shown in and out of source beside the lesions of it the out-of-source model
trained on, and the balanced accuracy is given a second time over the classes
it trained on with at least --min-training-lesions lesions.

    python scripts/source_generalisation.py --config ham10000_cpu --data $DERMALENS_DATA/ham10000_224 \\
        --out runs/sources --folds 5 --set training.max_epochs=6

The in-source side may come from a finished `dermalens train --folds K` run of
the same config instead (`--in-source-run RUN`: its out-of-fold predictions
of the train + val pool; its test images are then left out on both sides),
which saves the K trainings. Each out-of-source model trains with the
config's per-model budget, as each fold model of the run did; one already
finished in OUT/without-S is reused (the table says so), so a new in-source run
is compared in seconds. OUT/in-source and OUT/without-S are reused (or
resumed) only when their config.yaml holds this command's settings (recipe,
--set, --folds, seed, test fraction, data); otherwise the script stops and
names the differences.

Results: OUT/generalisation.json, OUT/generalisation.md, OUT/generalisation.png
and OUT/generalisation_per_class.png.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from dermalens.atomic_io import atomic_write_json, atomic_write_text
from dermalens.config import ConfigError, load_config, recipe_differences
from dermalens.config_files import resolve_config_path
from dermalens.evaluation.calibration import fit_temperature
from dermalens.evaluation.metrics import SUBGROUP_MIN_IMAGES, subgroup_figures
from dermalens.evaluation.plots import plot_recall_in_and_out_of_source, plot_source_generalisation
from dermalens.inference.postprocess import calibrated_probabilities
from dermalens.run_folder import CV_FILE
from dermalens.training.cross_validation import train_folds
from dermalens.training.job import folder_settings_differences
from dermalens.training.run import train

MIN_IMAGES = SUBGROUP_MIN_IMAGES
MIN_TRAINING_LESIONS = 100
# Settings beside the recipe that a reused folder of OUT must share with this command (the data is compared too).
IN_SOURCE_KEYS = ("training.folds", "seed", "data.test_fraction")
HELD_OUT_KEYS = ("training.folds", "seed", "data.test_fraction", "data.val_fraction", "data.test_sources")


def training_lesions(split: pd.DataFrame, classes: list[str]) -> dict[str, int]:
    """Lesions of each class in a run's training split (its split.csv): what the model learnt each class from."""
    train = split[split["split"] == "train"]
    lesions = train.groupby("label")["lesion_id"].nunique()
    return {code: int(lesions.get(k, 0)) for k, code in enumerate(classes)}


def well_represented(row: dict, lesions: dict[str, int], minimum: int) -> dict:
    """Balanced accuracy (mean recall) on both sides over the scored classes that the out-of-source model
    trained on with at least `minimum` lesions: the gap with the classes a source nearly owns left aside.
    None with fewer than two such classes (one class's recall is no balance)."""
    classes = [code for code in row["in_source"]["classes_scored"] if lesions.get(code, 0) >= minimum]
    if len(classes) < 2:
        return {"min_training_lesions": minimum, "classes": classes, "in_source": None, "out_of_source": None,
                "gap": None}
    inside, outside = (float(np.mean([row[side]["recall_per_class"][code] for code in classes]))
                       for side in ("in_source", "out_of_source"))
    return {"min_training_lesions": minimum, "classes": classes, "in_source": inside, "out_of_source": outside,
            "gap": outside - inside}


def in_source_config(config: dict, folds: int) -> dict:
    """The in-source cross-validation's config: K lesion-grouped folds over all images, no test split."""
    cv_config = json.loads(json.dumps(config))
    cv_config["data"]["test_fraction"] = 0.0
    cv_config["training"].update(folds=folds, ensemble=False)
    return cv_config


def held_out_config(config: dict, source: str) -> dict:
    """The out-of-source model's config: one model trained on the other sources, tested on every image of `source`."""
    held_out = json.loads(json.dumps(config))
    held_out["data"]["test_sources"] = [source]
    held_out["training"]["folds"] = 1
    held_out["evaluation"]["n_bootstrap"] = 0
    return held_out


def check_reusable(folder: Path, config: dict, extra_keys: tuple[str, ...]) -> None:
    """A folder of OUT is reused (finished) or resumed (not yet) only when it was trained with `config`: one from
    another recipe, --folds, --set or data (an earlier command writing to the same OUT) must not pass for it."""
    differences = folder_settings_differences(folder, config, extra_keys)
    if differences:
        raise SystemExit(f"error: {folder} was trained with other settings ({'; '.join(differences)}); "
                         "use another --out or remove that folder")


def in_source(config: dict, out: Path, folds: int, run: Path | None = None) -> pd.DataFrame:
    """Out-of-fold probabilities of every image, from K-fold CV over all sources (or over `run`'s pool)."""
    folder = run if run is not None else out / "in-source"
    if run is None:
        cv_config = in_source_config(config, folds)
        check_reusable(folder, cv_config, IN_SOURCE_KEYS)
    if run is None and not (folder / CV_FILE).is_file():
        train_folds(cv_config, folder, resume=folder.exists(), progress=sys.stderr.isatty())
    if not (folder / CV_FILE).is_file():
        raise SystemExit(f"error: {folder} holds no finished cross-validation ({CV_FILE} missing)")
    split = pd.read_csv(folder / "split.csv", dtype={"image_id": str})
    if "fold" in split:
        split = split[split["fold"] > 0].reset_index(drop=True)   # the pool, in the order its logits were saved
    logits = np.load(folder / "out_of_fold_logits.npy")
    if len(logits) != len(split):
        raise SystemExit(f"error: {folder}: {len(logits)} out-of-fold predictions for {len(split)} pool images "
                         "(were all its folds trained?)")
    labels = split["label"].to_numpy()
    probs = calibrated_probabilities(logits, fit_temperature(logits, labels))
    return split.assign(**{f"p{k}": probs[:, k] for k in range(probs.shape[1])})


def out_of_source(config: dict, out: Path, source: str) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """The held-out model's predictions on `source`, its split, and whether that model was trained now (else
    reused from OUT)."""
    folder = out / f"without-{source}"
    held_out = held_out_config(config, source)
    check_reusable(folder, held_out, HELD_OUT_KEYS)
    trained_now = not (folder / "predictions.csv").is_file()
    if trained_now:
        train(held_out, folder, resume=(folder / "checkpoints" / "last.ckpt").is_file(),
              progress=sys.stderr.isatty())
    return (pd.read_csv(folder / "predictions.csv", dtype={"image_id": str}),
            # ids as written: pandas would read a lesion id "NA" as missing (as the run's own reader does not)
            pd.read_csv(folder / "split.csv", dtype={"image_id": str, "lesion_id": str}, keep_default_na=False),
            trained_now)


def training_minutes(folder: Path) -> float | None:
    """The held-out model's own training minutes (its status.json; the trunk cache and scoring apart), so a
    rerun that reuses it still states what it cost."""
    try:
        return round(json.loads((folder / "status.json").read_text())["train_seconds"] / 60, 1)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def image_sources(data: Path) -> dict[str, str]:
    """image_id -> source (HAM10000's `dataset` column) of every image of `data` that names one."""
    metadata_file = data / "HAM10000_metadata.csv"
    if not metadata_file.is_file():
        raise ConfigError(f"{metadata_file} not found: --data must be a HAM10000 folder, whose metadata names "
                          "each image's source (its dataset column)")
    metadata = pd.read_csv(metadata_file, dtype={"image_id": str})
    if "dataset" not in metadata:
        raise ConfigError(f"{metadata_file} has no dataset column: it names no image's source")
    metadata = metadata.dropna(subset=["dataset"])
    return dict(zip(metadata["image_id"], metadata["dataset"].astype(str)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", required=True, help="a data set whose images carry their source (HAM10000)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--folds", type=int, default=5, help="folds of the in-source cross-validation")
    parser.add_argument("--sources", nargs="*", help="default: every source of the data")
    parser.add_argument("--in-source-run", type=Path, help="a finished `train --folds K` run of the same config: "
                        "its out-of-fold predictions are the in-source side")
    parser.add_argument("--min-training-lesions", type=int, default=MIN_TRAINING_LESIONS, metavar="N",
                        help="the second balanced accuracy counts the classes the out-of-source model trained on "
                             f"with at least N lesions (default {MIN_TRAINING_LESIONS})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    try:
        # Everything a typo can break is checked before the first model trains (hours before the held-out ones).
        config = load_config(resolve_config_path(args.config), [*args.set, "training.ensemble=false"],
                             {"data": {"path": str(args.data)}})   # the folder name as given, not read as YAML
        if args.min_training_lesions < 1:
            raise ConfigError(f"--min-training-lesions must be 1 or more, got {args.min_training_lesions}")
        if args.in_source_run is None and args.folds < 2:
            raise ConfigError(f"--folds must be 2 or more (the in-source side is cross-validated), got {args.folds}")
        source_of = image_sources(Path(args.data))
        known = sorted(set(source_of.values()))
        if not known:
            raise ConfigError(f"no image of {args.data} names its source (the metadata's dataset column is empty): "
                              "there is no source to hold out")
        unknown = [source for source in args.sources or [] if source not in known]
        if unknown:
            raise ConfigError(f"--sources {', '.join(unknown)}: not a source of {args.data}; its sources are "
                              f"{', '.join(known)}")
        # A folder of OUT from another command is refused now, not after the in-source side has trained.
        if args.in_source_run is None:
            check_reusable(args.out / "in-source", in_source_config(config, args.folds), IN_SOURCE_KEYS)
        for source in args.sources or known:
            check_reusable(args.out / f"without-{source}", held_out_config(config, source), HELD_OUT_KEYS)
        generalisation(args, config, source_of, started, argv if argv is not None else sys.argv[1:])
    except (ConfigError, yaml.YAMLError) as error:   # ConfigError, from training too: a folder it cannot resume
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def in_source_recipe_differences(run: Path, config: dict) -> list[str]:
    """How the in-source run's recipe differs from this command's, as recorded in its config.yaml (a setting
    added since the run was made counts at the value it trained with: config.UNRECORDED_MEANS)."""
    return recipe_differences(yaml.safe_load((run / "config.yaml").read_text()), config)


def generalisation(args: argparse.Namespace, config: dict, source_of: dict[str, str], started: float,
                   argv: list[str]) -> None:
    """Both sides for each source, scored; the table, JSON and figure written into --out."""
    args.out.mkdir(parents=True, exist_ok=True)
    differences = []
    if args.in_source_run is not None and (args.in_source_run / "config.yaml").is_file():
        differences = in_source_recipe_differences(args.in_source_run, config)
        if differences:
            logging.warning("the in-source run %s was trained with another recipe (%s): the gap compares two recipes; "
                            "compare the out-of-source column with another held-out run instead",
                            args.in_source_run, "; ".join(differences))
    inside = in_source(config, args.out, args.folds, args.in_source_run)
    inside["source"] = inside["image_id"].map(source_of)
    classes = list(config["data"]["classes"]) if isinstance(config["data"]["classes"], list) else \
        ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    rows = []
    for source in args.sources or sorted(inside["source"].dropna().unique()):
        outside, held_out_split, trained_now = out_of_source(config, args.out, source)
        # The same images on both sides: with --in-source-run, the run's test images have no in-source prediction.
        mine = inside[inside["source"] == source].set_index("image_id")
        outside = outside[outside["image_id"].isin(mine.index)]
        mine = mine.loc[outside["image_id"]]
        labels = mine["label"].to_numpy()
        in_probs = mine[[f"p{k}" for k in range(len(classes))]].to_numpy()
        out_probs = outside[[f"p_{code}" for code in classes]].to_numpy()
        # Each side: the argmax, over the classes the source has MIN_IMAGES images of.
        row = {"source": source, "out_of_source_reused": not trained_now,
               "in_source": subgroup_figures(in_probs, labels, classes, min_images=MIN_IMAGES),
               "out_of_source": subgroup_figures(out_probs, labels, classes, min_images=MIN_IMAGES)}
        a, b = row["in_source"]["balanced_accuracy"], row["out_of_source"]["balanced_accuracy"]
        row["balanced_accuracy_gap"] = None if a is None or b is None else b - a
        row["out_of_source_train_minutes"] = training_minutes(args.out / f"without-{source}")
        row["out_of_source_training_lesions"] = training_lesions(held_out_split, classes)
        row["well_represented"] = well_represented(row, row["out_of_source_training_lesions"],
                                                   args.min_training_lesions)
        rows.append(row)
        atomic_write_json(args.out / "generalisation.json", {"rows": rows, "min_images": MIN_IMAGES,
                                                              "minutes": round((time.perf_counter() - started) / 60, 1)})
    atomic_write_text(args.out / "generalisation.md", markdown(rows, argv, differences))
    if rows:   # none when no image of the in-source side belongs to a source (the table says so, empty)
        plot_source_generalisation(rows, args.out / "generalisation.png")
        plot_recall_in_and_out_of_source(rows, args.out / "generalisation_per_class.png")
    print((args.out / "generalisation.md").read_text())


def markdown(rows: list[dict], argv: list[str], differences: list[str] = ()) -> str:
    def cell(value):
        return "n/a" if value is None else f"{value:.3f}"

    lines = ["`python scripts/source_generalisation.py " + " ".join(argv) + "`", "",
             f"Scored on each source's own images, over the classes it has at least {MIN_IMAGES} images of.", "",
             *([f"The in-source side comes from a run with another recipe ({'; '.join(differences)}): the gap "
                "compares two recipes; compare the out-of-source column across held-out runs instead.", ""]
               if differences else []),
             "| held-out source | images | classes scored | bal. acc. in-source | bal. acc. out-of-source | gap | "
             "macro AUC in / out | mel sens. @80% spec. in / out |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        a, b = row["in_source"], row["out_of_source"]
        lines.append(f"| {row['source']} | {a['images']} | {', '.join(a['classes_scored'])} | "
                     f"{cell(a['balanced_accuracy'])} | {cell(b['balanced_accuracy'])} | "
                     f"{cell(row['balanced_accuracy_gap'])} | {cell(a['auc_macro'])} / {cell(b['auc_macro'])} | "
                     f"{cell(a.get('mel_sensitivity_at_80_specificity'))} / "
                     f"{cell(b.get('mel_sensitivity_at_80_specificity'))} |")
    lines += per_class_markdown(rows)
    # A rerun reuses finished held-out models; say so, since the minutes then cover only the scoring.
    reused = [row["source"] for row in rows if row.get("out_of_source_reused")]
    if reused:
        lines += ["", f"Out-of-source models reused from an earlier run of this command (OUT/without-SOURCE): "
                      f"{', '.join(reused)}."]
    minutes = [f"{row['source']} {row['out_of_source_train_minutes']}" for row in rows
               if row.get("out_of_source_train_minutes") is not None]
    if minutes:
        lines += ["", f"Training minutes of each out-of-source model (its status.json; trunk cache and scoring "
                      f"apart): {', '.join(minutes)}."]
    return "\n".join(lines) + "\n"


def per_class_markdown(rows: list[dict]) -> list[str]:
    """Each class's recall in and out of source beside the lesions of it the out-of-source model trained on."""
    rows = [row for row in rows if "recall_per_class" in row["in_source"]]
    if not rows:
        return []
    lines = ["", "Where the gap comes from: each class's recall (the share of its images called that class), "
                 "beside the lesions of it the out-of-source model trained on.", "",
             "| held-out source | class | images | lesions trained on, out-of-source | recall in-source | "
             "recall out-of-source | change |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        inside, outside = row["in_source"]["recall_per_class"], row["out_of_source"]["recall_per_class"]
        lesions = row.get("out_of_source_training_lesions", {})
        for code in row["in_source"]["classes_scored"]:
            lines.append(f"| {row['source']} | {code} | {row['in_source']['images_per_class'][code]} | "
                         f"{lesions.get(code, 'n/a')} | {inside[code]:.3f} | {outside[code]:.3f} | "
                         f"{outside[code] - inside[code]:+.3f} |")
    lines.append("")
    for row in rows:
        kept = row.get("well_represented")
        if not kept:
            continue
        if kept["gap"] is not None:
            lines.append(f"- {row['source']}: over the classes the out-of-source model trained on with at least "
                         f"{kept['min_training_lesions']} lesions ({', '.join(kept['classes'])}), balanced accuracy "
                         f"{kept['in_source']:.3f} in-source, {kept['out_of_source']:.3f} out-of-source, gap "
                         f"{kept['gap']:+.3f}.")
        else:
            lines.append(f"- {row['source']}: the out-of-source model trained on fewer than two scored classes with "
                         f"at least {kept['min_training_lesions']} lesions ({', '.join(kept['classes']) or 'none'}).")
    return lines


if __name__ == "__main__":
    sys.exit(main())
