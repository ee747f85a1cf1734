"""scripts/crop_tta.py: the crops are cut where they say, and sets of crops are scored on out-of-fold logits."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dermalens.config import dump_config, load_config
from dermalens.data.geometry import fit_to_square
from support.scripts import load_script

pytestmark = pytest.mark.unit

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


@pytest.fixture(scope="module")
def script():
    yield load_script("crop_tta")
    sys.modules.pop("crop_tta", None)


def test_each_named_crop_is_cut_from_its_place_in_the_square(script):
    square = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    assert np.array_equal(script.crop_of_region(square, "full"), square)
    assert np.array_equal(script.crop_of_region(square, "top_left@0.5"), square[:4, :4])
    assert np.array_equal(script.crop_of_region(square, "top_right@0.5"), square[:4, 4:])
    assert np.array_equal(script.crop_of_region(square, "bottom_left@0.5"), square[4:, :4])
    assert np.array_equal(script.crop_of_region(square, "bottom_right@0.5"), square[4:, 4:])
    assert np.array_equal(script.crop_of_region(square, "centre@0.5"), square[2:6, 2:6])
    with pytest.raises(ValueError, match="crop scale must be in"):
        script.crop_of_region(square, "centre@1.5")


def test_the_full_crop_of_a_photo_is_what_the_model_is_given(script):
    """A 600x450 photo: crops come from the region the geometry keeps, at full resolution; `full` is the model's input."""
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, size=(450, 600, 3), dtype=np.uint8)
    full, centre, corner = script.crop_views(photo, ["full", "centre@0.5", "top_left@0.5"], 64, "center_square")
    assert np.array_equal(full, fit_to_square(photo, 64, "center_square"))
    assert centre.shape == corner.shape == (64, 64, 3)
    # The top-left corner of the centre square starts at column 75, not at the photo's own corner.
    assert np.array_equal(corner, fit_to_square(np.ascontiguousarray(photo[:225, 75:300]), 64, "squash"))
    # A squashing model's crops are cut from the whole photo, each side scaled alike.
    full, corner = script.crop_views(photo, ["full", "bottom_right@0.5"], 64, "squash")
    assert np.array_equal(full, fit_to_square(photo, 64, "squash"))
    assert np.array_equal(corner, fit_to_square(np.ascontiguousarray(photo[225:, 300:]), 64, "squash"))


def test_the_sets_compared_start_with_the_shipped_view(script):
    names = script.crop_names([0.875, 0.75])
    assert names == ["full", "centre@0.875", "centre@0.75", "top_left@0.875", "top_right@0.875",
                     "bottom_left@0.875", "bottom_right@0.875"]
    sets = script.crop_sets(names)
    assert sets["full (shipped)"] == [0]
    assert sets["centre@0.75 alone"] == [2] and sets["full + centre@0.75"] == [0, 2]
    assert sets["five crops@0.875 (centre + corners)"] == [1, 3, 4, 5, 6]
    assert sets["all"] == list(range(7))


def finished_run(folder: Path, per_fold: int = 70) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    config = load_config(None, ["training.folds=3"])
    config["data"]["classes"] = CLASSES
    (folder / "config.yaml").write_text(dump_config(config))
    n = 3 * per_fold
    labels = np.arange(n) % len(CLASSES)
    pool = pd.DataFrame({"image_id": [f"p{i}" for i in range(n)], "lesion_id": [f"P{i}" for i in range(n)],
                         "label": labels, "split": "train", "fold": np.repeat([1, 2, 3], per_fold)})
    pool.to_csv(folder / "split.csv", index=False)
    informative = rng.normal(size=(n, len(CLASSES))).astype(np.float32)
    informative[np.arange(n), labels] += 3.0
    np.save(folder / "out_of_fold_logits.npy", informative)
    return pool, informative


def test_kept_crop_logits_are_rescored_without_a_model_and_noise_crops_score_lower(script, tmp_path, monkeypatch):
    pool, informative = finished_run(tmp_path / "run")
    names = script.crop_names([0.875])
    noise = np.random.default_rng(2).normal(size=(len(names) - 1, *informative.shape)).astype(np.float32) * 6
    logits = np.concatenate([informative[None], noise])
    out = tmp_path / "out"
    out.mkdir()
    np.savez(out / "crop_logits.npz", logits=logits, names=np.array(names),
             image_ids=pool["image_id"].to_numpy(str), minutes=1.5, run=str((tmp_path / "run").resolve()),
             models=np.array(script.fold_models(tmp_path / "run", [1, 2, 3])))

    def no_model(*_args, **_kwargs):
        raise AssertionError("kept crop logits were computed again")

    monkeypatch.setattr(script, "out_of_fold_crop_logits", no_model)
    monkeypatch.setenv("DERMALENS_DATA", str(tmp_path))
    assert script.main(["--run", str(tmp_path / "run"), "--data", str(tmp_path / "images"), "--out", str(out),
                        "--scales", "0.875"]) == 0
    table = (out / "crop_tta.md").read_text()
    assert "--data $DERMALENS_DATA/images" in table and str(tmp_path) not in table
    assert "reproduces the run's saved out-of-fold logits (flip TTA) by at most 0.0e+00" in table
    rows = {row["crops"]: row for row in json.loads((out / "crop_tta.json").read_text())["rows"]}
    assert rows["full (shipped)"]["balanced_accuracy"] > rows["all"]["balanced_accuracy"] + 0.2
    assert set(rows["full (shipped)"]["rule"]) == {"balanced_accuracy", "accuracy"}
    # kept logits are of the flip views: a look without flips computes its own, and says so
    calls = []

    def without_flips(run, data, names, pool, classes, flips=True):
        calls.append(flips)
        return logits * 0.5

    monkeypatch.setattr(script, "out_of_fold_crop_logits", without_flips)
    assert script.main(["--run", str(tmp_path / "run"), "--data", str(tmp_path / "images"), "--out", str(out),
                        "--scales", "0.875", "--no-flips"]) == 0
    assert calls == [False] and "every crop as one view, without flips" in (out / "crop_tta.md").read_text()
    assert json.loads((out / "crop_tta.json").read_text())["flips"] is False
    table_after = (out / "crop_tta.md").read_text()
    assert "differs from the run's saved out-of-fold logits (with flip TTA)" in table_after
    assert "| full, no flips | 1 |" in table_after     # not the shipped view


def test_a_folder_that_is_not_a_cross_validated_run_or_a_bad_scale_is_refused_by_name(script, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    with pytest.raises(SystemExit):
        script.main(["--run", str(tmp_path / "run"), "--data", str(tmp_path), "--out", str(tmp_path / "out")])
    assert "lacks split.csv, config.yaml, out_of_fold_logits.npy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--run", str(tmp_path / "run"), "--data", str(tmp_path), "--out", str(tmp_path / "out"),
                     "--scales", "0.875", "1.5"])
    assert "between 0 and 1; got [1.5]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_kept_crop_logits_of_another_run_or_other_models_are_computed_again(script, tmp_path, monkeypatch):
    """The check compared crop names, image ids and flips: another run over the same pool (or the same run
    trained again in place) was scored with the first run's crop logits."""
    pool, informative = finished_run(tmp_path / "run")
    finished_run(tmp_path / "other")
    checkpoint = tmp_path / "run" / "fold-1" / "checkpoints" / "best.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")
    names = script.crop_names([0.875])
    calls = []

    def computed(run, data, names, pool, classes, flips=True):
        calls.append(Path(run).name)
        return np.repeat(informative[None], len(names), axis=0)

    monkeypatch.setattr(script, "out_of_fold_crop_logits", computed)
    out = tmp_path / "out"
    for run in ("run", "run", "other"):
        assert script.main(["--run", str(tmp_path / run), "--data", str(tmp_path), "--out", str(out),
                            "--scales", "0.875"]) == 0
    assert calls == ["run", "other"]          # the second look at "run" rescored its kept logits
    kept = np.load(out / "crop_logits.npz")
    assert str(kept["run"]) == str((tmp_path / "other").resolve()) and list(kept["names"]) == names
    assert script.main(["--run", str(tmp_path / "run"), "--data", str(tmp_path), "--out", str(out),
                        "--scales", "0.875"]) == 0
    checkpoint.write_bytes(b"weights trained again")      # the same run folder, another fold-1 model
    assert script.main(["--run", str(tmp_path / "run"), "--data", str(tmp_path), "--out", str(out),
                        "--scales", "0.875"]) == 0
    assert calls == ["run", "other", "run", "run"]
