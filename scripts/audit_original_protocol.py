"""How much does "augment first, split later" inflate the numbers? The original design's protocol, audited.

    python scripts/audit_original_protocol.py --data $DERMALENS_DATA/ham10000_224 --minutes 10 --out runs/audit

The design this project follows reported 84% accuracy, macro F1 0.77, melanoma
F1 0.91 and dermatofibroma F1 0.96 after augmenting every class to 3,500
images OFFLINE and only then splitting at random. Augmented copies of one
photo then sit on both sides of the split: the test set holds rotated and
brightened twins of training images, and the score measures recall of those
photos rather than skill on new lesions.

Both arms here use the same data (ham10000_224: one real image per lesion),
the same recipe (configs/ham10000_cpu.yaml), seed and training budget:

- original protocol: every class is brought to --per-class images (rare
  classes by augmented copies made with the recipe's own augmentations,
  nv by sampling its originals), written to disk, then split at random
  (stratified, 70/15/15), and scored on that random test split;
- lesion-grouped: the real images split by lesion (stratified), scored on
  real test images whose lesions the model never saw.

Prints a markdown table (each metric, both protocols, the inflation) and
writes audit.json and audit.md into --out. A rerun with the same --out
reuses the pool and the finished arms only when they were made with the
same settings (data, --config, --per-class, --seed, --minutes, --set; kept
in audit_settings.json beside each), and refuses other settings by name.
Research tool, not a diagnosis.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from dermalens.atomic_io import atomic_write_json, atomic_write_text
from dermalens.classes import CLASS_CODES, RESEARCH_DISCLAIMER
from dermalens.cli import resolve_config_path
from dermalens.config import AugmentationSection, load_config
from dermalens.data.preprocess import Preprocessing
from dermalens.data.readers import open_dataset
from dermalens.data.readers.ham10000 import HAM10000_METADATA
from dermalens.data.transforms import build_train_transform
from dermalens.evaluation.evaluate import git_commit
from dermalens.training.run import train

AUGMENTED_FOLDER = "HAM10000_images_augmented"
SETTINGS_FILE = "audit_settings.json"   # beside the pool and in each arm's folder
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc_macro")
PER_CLASS_F1 = ("mel", "df", "bcc", "akiec", "vasc", "bkl", "nv")


def augmenter(config: dict) -> A.Compose:
    """The recipe's own training augmentations, without normalisation (uint8 in, uint8 out)."""
    identity = Preprocessing(config["model"]["image_size"], (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    steps = build_train_transform(identity, AugmentationSection(**config["augmentation"])).transforms
    return A.Compose([s for s in steps if not isinstance(s, A.Normalize) and type(s).__name__ != "ToTensorV2"])


def check_settings(folder: Path, settings: dict, what: str, made: bool) -> None:
    """`folder` (the pool or an arm) is reused only if it was made with `settings`: they are written beside it
    before it is made, and a rerun with others is refused (audit.json would record settings its figures do
    not come from). `made`: the folder holds a finished pool or arm."""
    recorded_file = folder / SETTINGS_FILE
    if not made:
        # Nothing finished here (a first run, or one that failed part-way): this run's settings are the ones
        # that count, whatever an earlier, failed attempt recorded.
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(recorded_file, settings)
        return
    if not recorded_file.is_file():
        raise SystemExit(f"error: {folder} holds {what} that records no settings ({SETTINGS_FILE}; made by an "
                         "older version of this script); use another --out or remove that folder")
    recorded = json.loads(recorded_file.read_text())
    differences = [f"{key}: {recorded.get(key)!r} -> {value!r}" for key, value in settings.items()
                   if recorded.get(key) != value]
    if differences:
        raise SystemExit(f"error: {folder} holds {what} made with other settings ({'; '.join(differences)}); "
                         "use another --out or remove that folder")


def build_augmented_pool(data: Path, config: dict, per_class: int, out: Path, seed: int, settings: dict) -> Path:
    """The original protocol's data set on disk: per_class images per class, each its own 'lesion'.
    `settings`: what made it (data, recipe, --per-class, --seed, --set), checked on reuse."""
    made = (out / HAM10000_METADATA).is_file()
    check_settings(out, settings, "an augmented pool", made)
    if made:
        print(f"reusing the augmented pool in {out}", file=sys.stderr)
        return out
    dataset = open_dataset(data, "ham10000")
    rng = np.random.default_rng(seed)
    transform = augmenter(config)
    folder = out / AUGMENTED_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    records = dataset.records.reset_index(drop=True)
    progress = tqdm(total=per_class * len(CLASS_CODES), desc="augmenting before the split")
    for label, code in enumerate(CLASS_CODES):
        members = np.flatnonzero(records["label"].to_numpy() == label)
        if len(members) == 0:
            continue
        originals = rng.choice(members, size=min(per_class, len(members)), replace=False)
        sources = list(originals) + list(rng.choice(members, size=per_class - len(originals), replace=True))
        for n, row in enumerate(sources):
            image = dataset.load_image(int(row))
            if n >= len(originals):      # an augmented copy, made before any split exists
                image = transform(image=image)["image"]
            image_id = f"AUG_{code}_{n:05d}"
            cv2.imwrite(str(folder / f"{image_id}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            # One "lesion" per file: the grouped splitter then splits at random, as the original did.
            rows.append({"lesion_id": image_id, "image_id": image_id, "dx": code,
                         "source_image": records.loc[int(row), "image_id"], "augmented": n >= len(originals)})
            progress.update()
    progress.close()
    pd.DataFrame(rows).to_csv(out / HAM10000_METADATA, index=False)
    return out


def run_arm(name: str, config_name: str, data: Path, run_dir: Path, minutes: float, extra: list[str],
            settings: dict) -> dict:
    """One arm trained and scored on its test split (`settings`: what made it, checked on reuse)."""
    made = (run_dir / "metrics.json").is_file()
    check_settings(run_dir, settings, f"the {name} arm", made)
    if made:
        print(f"{name}: reusing {run_dir}", file=sys.stderr)
        return json.loads((run_dir / "metrics.json").read_text())
    budget = f"00:00:{int(minutes):02d}:{int(round((minutes % 1) * 60)):02d}"
    config = load_config(resolve_config_path(config_name),
                         [f"training.max_time={budget}", f"name={name}", *extra],
                         {"data": {"path": str(data), "format": "ham10000"}})   # the path as given, not as YAML
    started = time.perf_counter()
    result = train(config, run_dir)
    print(f"{name}: trained and evaluated in {(time.perf_counter() - started) / 60:.1f} min", file=sys.stderr)
    return result.metrics


def summary(metrics: dict) -> dict:
    row = {key: metrics[key] for key in METRICS}
    row.update({f"f1_{code}": metrics["per_class"][code]["f1"] for code in PER_CLASS_F1})
    row["n_test"] = metrics["n_samples"]
    return row


def table(original: dict, grouped: dict) -> str:
    lines = ["| metric | original protocol (augment, then random split) | lesion-grouped (real test lesions) "
             "| inflation |", "|---|---|---|---|"]
    for key in [*METRICS, *(f"f1_{c}" for c in PER_CLASS_F1)]:
        a, b = original[key], grouped[key]
        if a is None or b is None:
            lines.append(f"| {key} | {a} | {b} | n/a |")
        else:
            lines.append(f"| {key} | {a:.3f} | {b:.3f} | {a - b:+.3f} |")
    lines.append(f"| test images | {original['n_test']} | {grouped['n_test']} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="ham10000_224 (or any HAM10000 folder)")
    parser.add_argument("--config", default="ham10000_cpu", help="the recipe both arms use")
    parser.add_argument("--per-class", type=int, default=1000,
                        help="images per class in the original protocol's pool (the original used 3,500)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget of EACH arm")
    parser.add_argument("--out", default="runs/audit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides for both arms")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = load_config(resolve_config_path(args.config), [f"seed={args.seed}", *args.set])
    # What made each part, kept beside it: a rerun with other settings would reuse parts made with the old
    # ones while audit.json records the new.
    common = {"data": str(Path(args.data).expanduser().resolve()), "config": args.config, "seed": args.seed,
              "overrides": args.set}
    pool_settings = {**common, "per_class": args.per_class}
    pool = build_augmented_pool(Path(args.data), config, args.per_class, out / "augmented_pool", args.seed,
                                pool_settings)
    extra = [f"seed={args.seed}", *args.set]
    original = summary(run_arm("audit_original_protocol", args.config, pool, out / "original_protocol",
                               args.minutes, extra, {**pool_settings, "minutes": args.minutes}))
    grouped = summary(run_arm("audit_lesion_grouped", args.config, Path(args.data), out / "lesion_grouped",
                              args.minutes, extra, {**common, "minutes": args.minutes}))
    text = table(original, grouped)
    atomic_write_json(out / "audit.json", {
        "settings": {"data": str(args.data), "config": args.config, "per_class": args.per_class,
                     "minutes_per_arm": args.minutes, "seed": args.seed, "overrides": args.set,
                     "git_commit": git_commit()},
        "original_protocol": original, "lesion_grouped": grouped, "table_markdown": text,
        "disclaimer": RESEARCH_DISCLAIMER,
    })
    atomic_write_text(out / "audit.md", text + "\n")
    print(text)
    print(f"\nwritten: {out / 'audit.json'}, {out / 'audit.md'}\n{RESEARCH_DISCLAIMER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
