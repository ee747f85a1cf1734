"""scripts/weight_averaging.py end to end: a nested run trained on all but one fold of a finished run, students of
its whole pool (labels only, distilled from its out-of-fold logits), a student's own rule from students trained
without each nested fold, the held-out fold scored, reused on a rerun, another recipe refused."""
from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from dermalens.classes import CLASS_CODES
from dermalens.config import dump_config, load_config
from support.scripts import load_script

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def script():
    yield load_script("weight_averaging")
    sys.modules.pop("weight_averaging", None)


def test_the_script_trains_a_nested_run_and_scores_the_held_out_fold(script, tmp_path, shared_data):
    """A 3-fold 'finished run' (its config and split are all the script reads) on 12 real images per class."""
    metadata = pd.read_csv(shared_data / "ham10000_224" / "HAM10000_metadata.csv")
    chosen = metadata.groupby("dx").head(12).reset_index(drop=True)
    images = tmp_path / "ham" / "HAM10000_images_part_1"
    images.mkdir(parents=True)
    for image_id in chosen["image_id"]:
        (images / f"{image_id}.jpg").symlink_to(shared_data / "ham10000_224" / "HAM10000_images_224" / f"{image_id}.jpg")
    chosen.to_csv(tmp_path / "ham" / "HAM10000_metadata.csv", index=False)
    settings = {"data.path": str(tmp_path / "ham"), "data.format": "ham10000", "model.backbone": "tf_efficientnet_lite0", "model.image_size": 32,
                "scheduler.name": "cosine",
                "model.pretrained": "none", "training.batch_size": 16, "sampler.samples_per_class": 8,
                "training.max_epochs": 1, "training.monitor": "null", "training.freeze_stages": 4,
                "training.cached_views": 1, "training.progress_bar": "false", "data.cache_dir": "null",
                "training.precision": "32-true", "training.folds": 3, "evaluation.n_bootstrap": 10}
    config = load_config(None, [f"{key}={value}" for key, value in settings.items()])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(config))
    (run / "cv.json").write_text("{}")
    within_class = chosen.groupby("dx").cumcount().to_numpy()
    fold = np.where(within_class < 3, 0, within_class % 3 + 1)       # 3 of each class in test, then folds 1-3
    pd.DataFrame({"image_id": chosen["image_id"], "lesion_id": chosen["lesion_id"],
                  "label": chosen["dx"].map(CLASS_CODES.index), "split": np.where(fold == 0, "test", "train"),
                  "fold": fold}).to_csv(run / "split.csv", index=False)

    out = tmp_path / "nested"
    assert script.main(["--run", str(run), "--fold", "2", "--out", str(out), "--bootstrap", "20",
                        "--students", "0", "0.5:2"]) == 0
    result = json.loads((out / "weight_averaging.json").read_text())
    held_out = set(chosen["image_id"][fold == 2])
    assert result["images"] == len(held_out) == 21 and result["members"] == 2
    nested_split = pd.read_csv(out / "split.csv")
    assert not held_out & set(nested_split["image_id"])             # no nested member saw a held-out image
    assert set(nested_split.loc[nested_split["split"] == "test", "image_id"]) == set(chosen["image_id"][fold == 0])
    rows = {row["model"]: row for row in result["rows"]}
    assert rows["logit mean (shipped)"]["heads"] == 2 and rows["weight average"]["heads"] == 1
    assert "paired_ci" not in rows["logit mean (shipped)"]
    low, high = rows["weight average"]["paired_ci"]["auc_macro"]
    assert low <= rows["weight average"]["delta"]["auc_macro"] <= high
    assert (out / "weight_averaging.png").stat().st_size > 0 and "| weight average |" in (
        out / "weight_averaging.md").read_text()
    # The rule as shipped (fitted on the nested out-of-fold logits) scored on every row's held-out logits.
    for row in rows.values():
        assert 0 < row["shipped_rule_balanced_accuracy"] <= 1 and 0 <= row["mel_flag_specificity"] <= 1
    assert "rule fitted out of fold" in (out / "weight_averaging.md").read_text()
    # Students: one model on the whole nested pool, the distilled one taught by the nested out-of-fold logits.
    distilled = "one model, whole pool, distilled (weight 0.5, T 2)"
    assert rows["one model, whole pool, labels only"]["heads"] == rows[distilled]["heads"] == 1
    assert set(result["student_minutes"]) == {"one model, whole pool, labels only", distilled}
    student_split = pd.read_csv(out / "student-w0.5-t2" / "split.csv")
    pool = set(nested_split.loc[nested_split["split"] == "train", "image_id"])
    assert set(student_split.loc[student_split["split"] == "train", "image_id"]) == pool
    assert "val" not in set(student_split["split"]) and not held_out & set(student_split["image_id"])
    teacher = np.load(out / "student-w0.5-t2" / "teacher_logits.npy")
    taught = np.isfinite(teacher).all(axis=1)
    assert taught.sum() == len(pool)
    np.testing.assert_allclose(np.sort(teacher[taught], axis=0), np.sort(np.load(out / "out_of_fold_logits.npy"), axis=0))
    assert not (out / "student-labels-only" / "teacher_logits.npy").exists()
    with pytest.raises(SystemExit):
        script.main(["--run", str(run), "--out", str(out), "--students", "0.5"])   # a temperature is needed

    # A rerun reuses the nested models; --own-rule adds one student per nested fold, each trained without that
    # fold, whose out-of-fold logits give the student its own rule.
    checkpoints = [out / "fold-1" / "checkpoints" / "best.ckpt", out / "student-w0.5-t2" / "checkpoints" / "best.ckpt"]
    written = [checkpoint.stat().st_mtime_ns for checkpoint in checkpoints]
    assert script.main(["--run", str(run), "--fold", "2", "--out", str(out), "--bootstrap", "20",
                        "--students", "0.5:2", "--own-rule"]) == 0
    assert [checkpoint.stat().st_mtime_ns for checkpoint in checkpoints] == written
    result = json.loads((out / "weight_averaging.json").read_text())
    rows = {row["model"]: row for row in result["rows"]}
    own = rows[f"{distilled}, rule fitted on its own out-of-fold"]
    assert own["heads"] == 1 and own["auc_macro"] == rows[distilled]["auc_macro"]      # the same model's logits
    low, high = own["paired_ci"]["shipped_rule_balanced_accuracy"]
    assert low <= own["delta"]["shipped_rule_balanced_accuracy"] <= high
    assert f"{distilled}: its out-of-fold students" in result["student_minutes"]
    nested_folds = nested_split.set_index("image_id")["fold"]
    for nested_fold in (1, 2):
        fold_split = pd.read_csv(out / f"student-w0.5-t2-without-fold-{nested_fold}" / "split.csv")
        trained_on = set(fold_split.loc[fold_split["split"] == "train", "image_id"])
        assert trained_on == pool - set(nested_folds.index[nested_folds == nested_fold]) and trained_on < pool
    with pytest.raises(SystemExit):
        script.main(["--run", str(run), "--out", str(out), "--own-rule"])           # --own-rule needs --students
    config["model"]["drop_rate"] = 0.5
    (run / "config.yaml").write_text(dump_config(config))
    with pytest.raises(SystemExit, match="another recipe.*model.drop_rate"):
        script.main(["--run", str(run), "--fold", "2", "--out", str(out), "--bootstrap", "20"])
