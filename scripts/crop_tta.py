"""Does multi-crop test-time augmentation help? Measured out of fold, before anything ships.

The literature reports +1 to +2 points of balanced accuracy from averaging
crops of each image at test time (ISIC 2018 entries). Whether that holds for
a model is a question for its held-out predictions, not for the test split:
each image of a finished cross-validated run's pool (`dermalens train
--folds K`) is predicted by the fold model that never saw its lesion, on
several crops of its square input, each with the model's flip views:

- ``full``: the whole square, exactly what the model is shipped with;
- ``centre@S``: the centred square of side S (a fraction of the square) for each scale;
- ``top_left@S`` ... ``bottom_right@S``: the four corners at the first scale.

Each crop is cut from the region the model's geometry policy keeps (its
centre square for `center_square`: a whole 224-px training image, or the
centre 450 square of a 600x450 photo) at the image's own resolution and
resized to the model's input, so a full-size photo would gain real pixels,
not upsampled ones. The table scores sets of crops (the mean of their
logits) as recipes are compared (scripts/compare_recipes.py): temperature
fitted on the pool, argmax, and the decision rule cross-fitted over the folds.

    python scripts/crop_tta.py --run runs/ham10000_cpu --data $DERMALENS_DATA/ham10000_224 \\
        --out runs/crop_tta

Every crop is one more pass through the network per view: K crops cost K
times the flip TTA's time. The per-crop logits are kept in OUT/crop_logits.npz,
with the run folder and each fold model's checkpoint (size and modification
time), so a rerun with the same run, models and crops only rescores them;
any other is computed again. Results: OUT/crop_tta.json
and OUT/crop_tta.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from dermalens.atomic_io import atomic_write_json, atomic_write_text
from dermalens.config import load_config
from dermalens.data.geometry import crop_box, resize_image
from dermalens.data.readers import open_dataset
from dermalens.evaluation.calibration import fit_temperature
from dermalens.inference.load import load_predictor
from dermalens.inference.postprocess import calibrated_probabilities
from dermalens.run_folder import CONFIG_FILE, OUT_OF_FOLD_LOGITS, SPLIT_FILE
from dermalens.training.cross_validation import summarise

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_recipes import cross_fitted_rule, read_out_of_fold  # noqa: E402  (a sibling script)

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
_BATCH = 32


def crop_names(scales: Sequence[float]) -> list[str]:
    """The crops measured: the whole square, the centre at each scale, the four corners at the first scale."""
    return ["full", *(f"centre@{s:g}" for s in scales), *(f"{corner}@{scales[0]:g}" for corner in CORNERS)]


def crop_of_region(region: np.ndarray, name: str) -> np.ndarray:
    """One named crop of the region the geometry policy keeps (not resized); each side scaled alike."""
    if name == "full":
        return region
    place, _, scale = name.partition("@")
    height, width = region.shape[:2]
    crop_height, crop_width = int(round(height * float(scale))), int(round(width * float(scale)))
    if not (0 < crop_height <= height and 0 < crop_width <= width):
        raise ValueError(f"crop scale must be in (0, 1]; got {scale} in {name!r}")
    below, right = height - crop_height, width - crop_width
    top, left = {"centre": (below // 2, right // 2), "top_left": (0, 0), "top_right": (0, right),
                 "bottom_left": (below, 0), "bottom_right": (below, right)}[place]
    return region[top:top + crop_height, left:left + crop_width]


def crop_views(image: np.ndarray, names: Sequence[str], size: int, geometry: str) -> list[np.ndarray]:
    """An RGB uint8 image -> its named crops of the geometry's region, each resized to size x size.

    `full` is exactly the model's input (`geometry.fit_to_square`): the same region, the same resize.
    """
    top, left, height, width = crop_box(*image.shape[:2], geometry)
    region = image[top:top + height, left:left + width]
    return [resize_image(np.ascontiguousarray(crop_of_region(region, name)), size) for name in names]


def crop_set_rows(sets: dict[str, list[int]], crop_logits: np.ndarray, pool: pd.DataFrame,
                  classes: list[str]) -> list[dict]:
    """Score each set of crops (indices into crop_logits' first axis) on the pool's out-of-fold predictions."""
    labels = pool["label"].to_numpy()
    rows = []
    for name, members in sets.items():
        logits = crop_logits[members].mean(axis=0)
        probabilities = calibrated_probabilities(logits, fit_temperature(logits, labels))
        rows.append({"crops": name, "views": len(members), **summarise(probabilities, labels, classes),
                     "rule": cross_fitted_rule(pool, logits, classes)})
    return rows


def crop_sets(names: list[str], flips: bool = True) -> dict[str, list[int]]:
    """The sets compared: the shipped view, each centre alone and with it, the five crops of the literature, all."""
    index = {name: k for k, name in enumerate(names)}
    corners = [k for name, k in index.items() if name.split("@")[0] in CORNERS]
    centres = [k for name, k in index.items() if name.startswith("centre@")]
    sets = {"full (shipped)" if flips else "full, no flips": [0]}
    for k in centres:
        sets[f"{names[k]} alone"] = [k]
    for k in centres:
        sets[f"full + {names[k]}"] = [0, k]
    if centres and corners:
        sets[f"five crops@{names[corners[0]].split('@')[1]} (centre + corners)"] = [centres[0], *corners]
        sets["full + five crops"] = [0, centres[0], *corners]
    sets["all"] = list(range(len(names)))
    return sets


def out_of_fold_crop_logits(run: Path, data: str, names: list[str], pool: pd.DataFrame,
                            classes: list[str], flips: bool = True) -> np.ndarray:
    """(crops, pool, C) logits: each pool image by the fold model that never saw it, every crop with the four
    flip views (`flips`) or as it is."""
    dataset = open_dataset(data)
    row_of = {image_id: k for k, image_id in enumerate(dataset.records["image_id"])}
    missing = [image_id for image_id in pool["image_id"] if image_id not in row_of]
    if missing:
        raise SystemExit(f"{len(missing)} images of {run / 'split.csv'} are not in {data} (first: {missing[0]}); "
                         "give the data the run was trained on")
    out = np.zeros((len(names), len(pool), len(classes)), np.float32)
    with tqdm(total=len(pool), desc="crops", unit="img", disable=not sys.stderr.isatty()) as bar:
        for fold in sorted(pool["fold"].unique()):
            checkpoint = run / f"fold-{fold}" / "checkpoints" / "best.ckpt"
            if not checkpoint.is_file():
                raise SystemExit(f"{checkpoint} not found: --run needs a finished `dermalens train --folds K` run")
            predictor = load_predictor(checkpoint, tta=flips)
            pre = predictor.preprocessing
            rows = np.flatnonzero(pool["fold"].to_numpy() == fold)
            logging.info("fold %s: %d images x %d crops x %d views through %s", fold, len(rows), len(names),
                         4 if predictor.tta else 1, checkpoint)
            for start in range(0, len(rows), _BATCH):
                chunk = rows[start:start + _BATCH]
                images = [dataset.load_image(row_of[pool["image_id"].iloc[i]]) for i in chunk]
                views = [crop_views(image, names, pre.image_size, pre.geometry) for image in images]
                for k in range(len(names)):
                    out[k, chunk] = predictor.logits(predictor.batch([v[k] for v in views]))
                bar.update(len(chunk))
    return out


def fold_models(run: Path, folds) -> list[str]:
    """Each fold model's identity, 'fold-K/checkpoints/best.ckpt SIZE MTIME_NS' ('... missing' where there is
    none): kept crop logits are reused only for the same run and the same checkpoints (a run folder trained
    again in place, or another run whose pool happens to match, keeps its image ids)."""
    identities = []
    for fold in folds:
        name = f"fold-{fold}/checkpoints/best.ckpt"
        checkpoint = run / name
        stat = checkpoint.stat() if checkpoint.is_file() else None
        identities.append(f"{name} {stat.st_size} {stat.st_mtime_ns}" if stat else f"{name} missing")
    return identities


def command_line(argv: list[str]) -> str:
    """The command as a reader can rerun it: the data folder named as $DERMALENS_DATA, not this machine's path."""
    command = "python scripts/crop_tta.py " + " ".join(argv)
    data_root = os.environ.get("DERMALENS_DATA", "").rstrip("/")
    return command.replace(data_root, "$DERMALENS_DATA") if data_root else command


def markdown(rows: list[dict], argv: list[str], minutes: float, parity: float, flips: bool = True) -> str:
    views = "every crop with its four flip views" if flips else "every crop as one view, without flips"
    lines = [f"`{command_line(argv)}`", "",
             f"Out-of-fold predictions of the run's pool, {views}; {minutes:.1f} min to compute the crops. The "
             f"whole square {'reproduces' if flips else 'differs from'} the run's saved out-of-fold logits "
             f"({'flip TTA' if flips else 'with flip TTA'}) by at most {parity:.1e}.", "",
             "| crops | crops per image | OOF bal. acc. | OOF acc. | OOF macro AUC | OOF mel sens. @80% spec. | "
             "rule bal. acc. / acc. (cross-fitted) |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        rule = row["rule"]
        lines.append(f"| {row['crops']} | {row['views']} | {row['balanced_accuracy']:.3f} | {row['accuracy']:.3f} | "
                     f"{row['auc_macro']:.3f} | {row['mel_sensitivity_at_80_specificity']:.3f} | "
                     f"{rule.get('balanced_accuracy', float('nan')):.3f} / {rule.get('accuracy', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="a finished `dermalens train --folds K` run")
    parser.add_argument("--data", required=True, help="the data the run was trained on")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--scales", nargs="+", type=float, default=[0.875, 0.75],
                        help="crop sides as fractions of the square (the corners use the first)")
    parser.add_argument("--no-flips", action="store_true",
                        help="each crop as one view, without the four flips (what does flip TTA buy?)")
    args = parser.parse_args(argv)
    wrong = [scale for scale in args.scales if not 0 < scale < 1]
    if wrong:
        parser.error(f"--scales are crop sides as fractions of the square, between 0 and 1; got {wrong}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    missing = [name for name in (SPLIT_FILE, CONFIG_FILE, OUT_OF_FOLD_LOGITS) if not (args.run / name).is_file()]
    if missing:
        parser.error(f"{args.run} lacks {', '.join(missing)}: --run needs a finished `dermalens train --folds K` run")
    pool, saved = read_out_of_fold(args.run)
    pool = pool.reset_index(drop=True)
    classes = list(load_config(args.run / CONFIG_FILE)["data"]["classes"])
    names = crop_names(args.scales)
    args.out.mkdir(parents=True, exist_ok=True)
    kept = args.out / "crop_logits.npz"
    started = time.perf_counter()
    cached = np.load(kept) if kept.is_file() else None
    flips = not args.no_flips
    run, models = str(args.run.resolve()), fold_models(args.run, sorted(pool["fold"].unique()))
    if cached is not None and list(cached["names"]) == names and list(cached["image_ids"]) == list(pool["image_id"]) \
            and bool(cached["flips"] if "flips" in cached.files else True) == flips \
            and "run" in cached.files and str(cached["run"]) == run \
            and "models" in cached.files and list(cached["models"]) == models:
        crop_logits, minutes = cached["logits"], float(cached["minutes"])
    else:
        if cached is not None:
            logging.info("%s was computed for another run, models, crops or flips: computing them again", kept)
        crop_logits = out_of_fold_crop_logits(args.run, args.data, names, pool, classes, flips)
        minutes = (time.perf_counter() - started) / 60
        staging = args.out / "crop_logits.tmp.npz"
        np.savez(staging, logits=crop_logits, names=np.array(names), image_ids=pool["image_id"].to_numpy(str),
                 minutes=minutes, flips=flips, run=run, models=np.array(models))
        staging.replace(kept)
    parity = float(np.abs(crop_logits[0] - saved).max()) if saved.shape == crop_logits[0].shape else float("nan")
    rows = crop_set_rows(crop_sets(names, flips), crop_logits, pool, classes)
    atomic_write_json(args.out / "crop_tta.json", {"run": str(args.run), "crops": names, "flips": flips, "rows": rows,
                                                   "minutes": round(minutes, 1), "parity_max_abs": parity})
    atomic_write_text(args.out / "crop_tta.md", markdown(rows, argv if argv is not None else sys.argv[1:],
                                                         minutes, parity, flips))
    print((args.out / "crop_tta.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
