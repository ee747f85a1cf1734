"""A split by source (clinic / device): the held-out source is all of test, and in no other split."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from dermalens.config import ConfigError, load_config, recipe_differences
from dermalens.data.readers.ham10000 import read_ham10000_metadata
from dermalens.data.split import SourceSplitError, assert_no_lesion_leakage, source_split
from support.scripts import load_script

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def ham_records(shared_data: Path) -> pd.DataFrame:
    records, _ = read_ham10000_metadata(shared_data / "HAM10000_metadata.csv")
    return records


def test_ham10000_records_carry_their_source(ham_records):
    assert set(ham_records["source"]) == {"rosendahl", "vidir_modern", "vidir_molemax", "vienna_dias"}


@pytest.mark.filterwarnings("ignore:.*show lesions that are also in")
@pytest.mark.parametrize("held_out", [["rosendahl"], ["vidir_molemax"], ["vienna_dias", "vidir_modern"]])
def test_the_source_split_never_mixes_sources(ham_records, held_out):
    split = source_split(ham_records, held_out, val_fraction=0.15, seed=0)
    test_sources = set(ham_records.loc[split == "test", "source"])
    other_sources = set(ham_records.loc[split != "test", "source"])
    assert test_sources == set(held_out)
    assert not test_sources & other_sources
    assert (split[ham_records["source"].isin(held_out)] == "test").all()
    assert (split == "val").any() and (split == "train").any()
    used = split != "excluded"   # photos of a test lesion taken in another source train nowhere
    assert_no_lesion_leakage(ham_records[used], split[used])   # and val is drawn by lesion


def test_an_unknown_source_is_named_with_the_known_ones(ham_records):
    with pytest.raises(SourceSplitError, match="rosendal.*rosendahl, vidir_modern"):
        source_split(ham_records, ["rosendal"])
    with pytest.raises(SourceSplitError, match="nothing is left"):
        source_split(ham_records, ["rosendahl", "vidir_modern", "vidir_molemax", "vienna_dias"])


def test_data_without_sources_is_refused_by_name(ham_records):
    with pytest.raises(SourceSplitError, match="no source|has none"):
        source_split(ham_records.assign(source=None), ["rosendahl"])


def test_test_sources_is_a_config_key_taking_one_name_or_a_list():
    assert load_config(None, ["data.test_sources=rosendahl"])["data"]["test_sources"] == "rosendahl"
    assert load_config(None, ["data.test_sources=[a, b]"])["data"]["test_sources"] == ["a", "b"]
    with pytest.raises(ConfigError):
        load_config(None, ["data.test_sources=3"])


def test_a_class_folder_carries_sources_from_its_lesion_csv(tmp_path, shared_data: Path):
    from dermalens.data.prepare import prepare_data

    metadata = pd.read_csv(shared_data / "ham10000_224" / "HAM10000_metadata.csv")
    chosen = metadata[metadata["dx"].isin(["mel", "nv"])].groupby(["dx", "dataset"]).head(6)
    chosen = chosen[chosen["dataset"].isin(["rosendahl", "vidir_modern"])]
    for row in chosen.itertuples():
        folder = tmp_path / "photos" / row.dx
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{row.image_id}.jpg").symlink_to(shared_data / "ham10000_224" / "HAM10000_images_224"
                                                      / f"{row.image_id}.jpg")
    chosen.rename(columns={"dataset": "source"})[["image_id", "lesion_id", "source"]].to_csv(
        tmp_path / "photos" / "lesion_ids.csv", index=False)
    config = load_config(None, [f"data.path={tmp_path / 'photos'}", "data.format=folder", "model.image_size=32",
                                "data.cache_dir=null", "data.test_sources=rosendahl", "data.val_fraction=0.25"])
    prepared = prepare_data(config, progress=False)
    sources = prepared.dataset.records["source"]
    assert set(sources) == {"rosendahl", "vidir_modern"}
    assert set(sources[prepared.split == "test"]) == {"rosendahl"}
    assert "rosendahl" not in set(sources[prepared.split != "test"])


def test_an_in_source_run_of_another_recipe_is_named_in_the_generalisation_table(tmp_path):
    """--in-source-run takes a finished run's out-of-fold predictions; a run trained with other settings
    makes the gap compare two recipes, and the script says which settings differ."""
    module = load_script("source_generalisation")
    from dermalens.config_files import resolve_config_path

    recipe = resolve_config_path("ham10000_cpu")
    shipped = load_config(recipe, ["data.path=/data"])
    same = load_config(recipe, ["data.path=/elsewhere", "training.max_time=null", "training.ensemble=false"])
    assert recipe_differences(shipped, same) == []        # budget and packaging are not the recipe
    colour = load_config(recipe, ["data.path=/data", "model.color=shades_of_gray", "augmentation.hue=5"])
    differences = recipe_differences(shipped, colour)
    assert differences == ["augmentation.hue: 0 -> 5", "model.color: 'none' -> 'shades_of_gray'"]
    row = {"source": "rosendahl", "balanced_accuracy_gap": -0.2,
           "in_source": {"images": 3, "classes_scored": ["nv"], "balanced_accuracy": 0.6, "auc_macro": 0.9},
           "out_of_source": {"images": 3, "classes_scored": ["nv"], "balanced_accuracy": 0.4, "auc_macro": 0.8}}
    assert "model.color: 'none' -> 'shades_of_gray'" in module.markdown([row], ["--sources", "rosendahl"], differences)
    assert "another recipe" not in module.markdown([row], ["--sources", "rosendahl"])
    # A run from a version without a later setting is the same recipe when that setting is at its default.
    run = tmp_path / "run"
    run.mkdir()
    recorded = load_config(recipe, ["data.path=/data"])
    del recorded["sampler"]["source_power"]
    (run / "config.yaml").write_text(yaml.safe_dump(recorded))
    assert module.in_source_recipe_differences(run, shipped) == []
    assert module.in_source_recipe_differences(run, load_config(recipe, ["data.path=/data", "sampler.source_power=0"])) \
        == ["sampler.source_power: 1.0 -> 0"]
    reused = dict(row, out_of_source_reused=True)
    assert "models reused from an earlier run of this command (OUT/without-SOURCE): rosendahl." in \
        module.markdown([reused], ["--sources", "rosendahl"])
    assert "reused" not in module.markdown([dict(row, out_of_source_reused=False)], ["--sources", "rosendahl"])


def test_a_source_generalisation_folder_of_other_settings_is_refused_not_reused(tmp_path):
    """OUT/in-source was reused whenever it held cv.json, OUT/without-S whenever it held predictions.csv,
    whatever the recipe, --folds or --set of the new command."""
    import json

    import numpy as np

    from dermalens.config import dump_config
    from dermalens.config_files import resolve_config_path

    module = load_script("source_generalisation")
    out = tmp_path / "out"

    def config(*overrides: str) -> dict:
        return load_config(resolve_config_path("ham10000_cpu"), [*overrides, "training.ensemble=false"],
                           {"data": {"path": str(tmp_path)}})

    inside = out / "in-source"
    inside.mkdir(parents=True)
    (inside / "config.yaml").write_text(dump_config(module.in_source_config(config(), 5)))
    (inside / "cv.json").write_text(json.dumps({}))
    pd.DataFrame({"image_id": ["a", "b"], "lesion_id": ["A", "B"], "label": [0, 1], "fold": [1, 2]}).to_csv(
        inside / "split.csv", index=False)
    np.save(inside / "out_of_fold_logits.npy", np.array([[2.0, 0.0], [0.0, 2.0]]))
    with pytest.raises(SystemExit, match=r"in-source was trained with other settings \(training.folds: 5 -> 3\); "
                                         r"use another --out"):
        module.in_source(config(), out, 3)
    with pytest.raises(SystemExit, match=r"optimizer.lr: .* -> 0.5"):
        module.in_source(config("optimizer.lr=0.5"), out, 5)
    assert len(module.in_source(config(), out, 5)) == 2      # the same settings: reused

    without = out / "without-rosendahl"
    without.mkdir()
    (without / "config.yaml").write_text(dump_config(module.held_out_config(config(), "rosendahl")))
    pd.DataFrame({"image_id": ["a"]}).to_csv(without / "predictions.csv", index=False)
    pd.DataFrame({"image_id": ["b"], "lesion_id": ["B"], "label": [1], "split": ["train"]}).to_csv(
        without / "split.csv", index=False)
    with pytest.raises(SystemExit, match=r"without-rosendahl was trained with other settings \(seed: 0 -> 3\)"):
        module.out_of_source(config("seed=3"), out, "rosendahl")
    with pytest.raises(SystemExit, match=r"data.path: '.*' -> '.*elsewhere'"):
        module.out_of_source({**config(), "data": {**config()["data"], "path": str(tmp_path / "elsewhere")}},
                             out, "rosendahl")
    predictions, split, trained_now = module.out_of_source(config(), out, "rosendahl")
    assert not trained_now and list(predictions["image_id"]) == ["a"] and list(split["lesion_id"]) == ["B"]


def test_source_generalisation_refuses_a_bad_setting_or_source_before_training(tmp_path, monkeypatch, capsys):
    """An unknown --sources name failed after the in-source side had trained (hours); a bad --set or --folds 1
    ended in a traceback."""
    module = load_script("source_generalisation")

    def no_training(*_args, **_kwargs):
        raise AssertionError("trained before the settings were checked")

    monkeypatch.setattr(module, "train_folds", no_training)
    monkeypatch.setattr(module, "train", no_training)
    data = tmp_path / "ham"
    data.mkdir()
    pd.DataFrame({"image_id": ["a", "b"], "lesion_id": ["A", "B"], "dx": ["nv", "mel"],
                  "dataset": ["rosendahl", "vidir_modern"]}).to_csv(data / "HAM10000_metadata.csv", index=False)
    base = ["--config", "ham10000_cpu", "--data", str(data), "--out", str(tmp_path / "out")]
    assert module.main([*base, "--sources", "rosendal"]) == 2
    assert "error: --sources rosendal: not a source of" in capsys.readouterr().err
    assert module.main([*base, "--set", "training.max_epochs"]) == 2
    assert "error: override 'training.max_epochs' must look like section.key=value" in capsys.readouterr().err
    assert module.main([*base, "--folds", "1"]) == 2
    assert "error: --folds must be 2 or more" in capsys.readouterr().err
    assert module.main([*base[:3], str(tmp_path), *base[4:]]) == 2
    assert "HAM10000_metadata.csv not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_gap_is_shown_per_class_beside_the_lesions_the_out_of_source_model_learnt_from(tmp_path):
    """rosendahl holds almost every akiec of HAM10000: a model trained without it learns akiec from a few lesions,
    and one balanced accuracy could not tell that from a device the model never saw."""
    import numpy as np
    from PIL import Image

    from dermalens.evaluation.metrics import subgroup_figures
    from dermalens.evaluation.plots import plot_recall_in_and_out_of_source

    module = load_script("source_generalisation")
    classes = ["akiec", "mel", "nv"]
    labels = np.repeat([0, 1, 2], 10)
    inside = np.eye(3)[labels]                                  # every image right in-source
    outside = np.eye(3)[np.where(labels == 0, 2, labels)]      # out-of-source, every akiec called nv
    in_scores, out_scores = subgroup_figures(inside, labels, classes), subgroup_figures(outside, labels, classes)
    assert out_scores["recall_per_class"] == {"akiec": 0.0, "mel": 1.0, "nv": 1.0}
    assert out_scores["balanced_accuracy"] == pytest.approx(2 / 3)
    split = pd.DataFrame({"lesion_id": ["A1", "A1", "M1", "M2", "N1", "X"], "label": [0, 0, 1, 1, 2, 0],
                          "split": ["train", "train", "train", "train", "train", "test"]})
    lesions = module.training_lesions(split, classes)
    assert lesions == {"akiec": 1, "mel": 2, "nv": 1}           # lesions, not images; the test row not counted
    row = {"source": "rosendahl", "in_source": in_scores, "out_of_source": out_scores,
           "balanced_accuracy_gap": out_scores["balanced_accuracy"] - 1.0,
           "out_of_source_training_lesions": lesions}
    run = tmp_path / "without-rosendahl"
    run.mkdir()
    assert module.training_minutes(run) is None                  # no status.json: no minutes, no error
    (run / "status.json").write_text('{"state": "finished", "train_seconds": 314.3}')
    row["out_of_source_train_minutes"] = module.training_minutes(run)
    row["well_represented"] = module.well_represented(row, lesions, 1)
    assert row["well_represented"]["classes"] == classes
    assert row["well_represented"]["gap"] == pytest.approx(-1 / 3)
    one_class = module.well_represented(row, lesions, 2)                  # mel alone: no balance to speak of
    assert one_class["classes"] == ["mel"] and one_class["gap"] is None
    table = module.markdown([row], ["--sources", "rosendahl"])
    assert "| rosendahl | akiec | 10 | 1 | 1.000 | 0.000 | -1.000 |" in table
    assert ("at least 1 lesions (akiec, mel, nv), balanced accuracy 1.000 in-source, 0.667 out-of-source, "
            "gap -0.333.") in table
    assert "fewer than two scored classes with at least 2 lesions (mel)." in \
        module.markdown([dict(row, well_represented=one_class)], ["--sources", "rosendahl"])
    assert "scoring apart): rosendahl 5.2." in table
    with Image.open(plot_recall_in_and_out_of_source([row, dict(row, source="vidir_modern")],
                                                     tmp_path / "per_class.png")) as png:
        assert png.width >= 6.4 * 120 and png.info["Disclaimer"]


def test_source_generalisation_refuses_a_minimum_of_no_lesions_or_data_without_sources(tmp_path, capsys):
    module = load_script("source_generalisation")
    base = ["--config", "ham10000_cpu", "--data", str(tmp_path), "--out", str(tmp_path / "out")]
    assert module.main([*base, "--min-training-lesions", "0"]) == 2
    assert "error: --min-training-lesions must be 1 or more, got 0" in capsys.readouterr().err
    # A dataset column left empty: refused before anything trains (it drew a figure of no panels, a traceback).
    pd.DataFrame({"image_id": ["a"], "lesion_id": ["A"], "dx": ["nv"], "dataset": [None]}).to_csv(
        tmp_path / "HAM10000_metadata.csv", index=False)
    assert module.main(base) == 2
    assert "names its source (the metadata's dataset column is empty)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
