"""scripts/compare_recipes.py: a finished cross-validated run as a reference row, over the same first folds."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score

from dermalens.config import dump_config, load_config
from support.scripts import load_script

pytestmark = pytest.mark.unit

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def finished_run(folder: Path, folds: int = 3, per_fold: int = 70) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A run folder as `dermalens train --folds` leaves it: config, split.csv, out-of-fold logits, cv.json."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    config = load_config(None, [f"training.folds={folds}"])
    config["data"]["classes"] = CLASSES
    (folder / "config.yaml").write_text(dump_config(config))
    n = folds * per_fold
    labels = np.arange(n) % len(CLASSES)
    fold = np.repeat(np.arange(1, folds + 1), per_fold)
    # Fold 1's logits point at the true class far more often than the other folds': a row that
    # mixed folds would show it.
    strength = np.where(fold == 1, 4.0, 0.5)
    logits = rng.normal(size=(n, len(CLASSES))).astype(np.float32)
    logits[np.arange(n), labels] += strength
    test = pd.DataFrame({"image_id": [f"t{i}" for i in range(20)], "lesion_id": [f"T{i}" for i in range(20)],
                         "label": np.arange(20) % len(CLASSES), "split": "test", "fold": 0})
    pool = pd.DataFrame({"image_id": [f"p{i}" for i in range(n)], "lesion_id": [f"P{i}" for i in range(n)],
                         "label": labels, "split": "train", "fold": fold})
    pd.concat([pool.iloc[:n // 2], test, pool.iloc[n // 2:]]).to_csv(folder / "split.csv", index=False)
    np.save(folder / "out_of_fold_logits.npy", logits)
    cv = {"folds": [{"fold": k, "balanced_accuracy": float(balanced_accuracy_score(labels[fold == k],
                                                                                 logits[fold == k].argmax(1)))}
                    for k in range(1, folds + 1)], "train_seconds": 60.0}
    (folder / "cv.json").write_text(json.dumps(cv))
    return logits, labels, fold


def test_a_reference_row_reads_only_the_first_folds_of_a_finished_run(tmp_path):
    script = load_script("compare_recipes")
    logits, labels, fold = finished_run(tmp_path / "shipped")
    row = script.reference_row(f"shipped recipe={tmp_path / 'shipped'}", folds=3, first_folds=1)
    first = fold == 1
    assert row["variant"] == "shipped recipe" and row["folds_trained"] == 1
    assert row["out_of_fold"]["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(labels[first], logits[first].argmax(1)))
    assert row["out_of_fold"]["balanced_accuracy"] > 0.9      # fold 1 alone; all folds pooled are far lower
    assert row["mean_sd"]["balanced_accuracy"]["sd"] == 0.0
    assert row["with_rule"] == {}                              # one fold: nothing to cross-fit on

    whole = script.reference_row(f"shipped recipe={tmp_path / 'shipped'}", folds=3, first_folds=None,
                                 rule_tolerances=(0.0, 1.0))
    assert whole["folds_trained"] == 3
    # The rule's headroom: tolerance 0 is the shipped rule (the table's rule column); a larger one may
    # give up accuracy but is fitted for balanced accuracy on the other folds all the same.
    assert [h["accuracy_tolerance"] for h in whole["rule_headroom"]] == [0.0, 1.0]
    assert whole["rule_headroom"][0]["balanced_accuracy"] == whole["with_rule"]["balanced_accuracy"]
    assert whole["rule_headroom"][0]["accuracy"] == whole["with_rule"]["accuracy"]
    assert whole["out_of_fold"]["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, logits.argmax(1)))
    assert set(whole["with_rule"]) == {"balanced_accuracy", "accuracy"}


def test_a_reference_run_with_other_folds_or_missing_files_is_refused_by_name(tmp_path):
    script = load_script("compare_recipes")
    finished_run(tmp_path / "five", folds=5, per_fold=14)
    with pytest.raises(SystemExit, match="that run has 5 folds, this comparison 3"):
        script.reference_row(f"base={tmp_path / 'five'}", folds=3, first_folds=1)
    (tmp_path / "half").mkdir()
    with pytest.raises(SystemExit, match="has no split.csv, cv.json, out_of_fold_logits.npy, config.yaml"):
        script.reference_row(f"base={tmp_path / 'half'}", folds=3, first_folds=1)


def test_the_table_shows_a_reference_row_without_minutes(tmp_path, capsys):
    script = load_script("compare_recipes")
    finished_run(tmp_path / "shipped")
    assert script.main(["--config", "ham10000_cpu", "--data", str(tmp_path), "--out", str(tmp_path / "out"),
                        "--first-folds", "1", "--reference", f"shipped={tmp_path / 'shipped'}",
                        "--rule-headroom", "0", "0.05"]) == 0
    table = (tmp_path / "out" / "comparison.md").read_text()
    assert "| shipped | `finished run shipped` | 1 of 3 |" in table and "see its run" in table
    assert "| accuracy it may give up | bal. acc. | acc. |" in table and "\n| 0.05 | " in table
    assert json.loads((tmp_path / "out" / "comparison.json").read_text())[0]["folds_trained"] == 1


def finished_variant(folder: Path) -> None:
    """A finished variant folder whose out-of-fold balanced accuracy reads 0.5 (to tell reuse from retraining)."""
    finished_run(folder)
    cv = json.loads((folder / "cv.json").read_text())
    cv["out_of_fold"] = {"balanced_accuracy": 0.5, "recall": {code: 0.5 for code in CLASSES}}
    cv["mean_sd"] = {"balanced_accuracy": {"mean": 0.5, "sd": 0.0}}
    (folder / "cv.json").write_text(json.dumps(cv))


def test_a_variant_folder_trained_with_other_settings_is_refused_by_name(tmp_path):
    """Two comparisons writing to one OUT would otherwise pass one's variant off as the other's."""
    from dermalens.config_files import resolve_config_path

    script = load_script("compare_recipes")
    folder = tmp_path / "out" / "base"
    finished_variant(folder)
    settings = [f"data.path={tmp_path}", "training.folds=3", "training.ensemble=false"]
    other = load_config(resolve_config_path("ham10000_cpu"), [*settings, "model.image_size=192"])
    (folder / "config.yaml").write_text(dump_config(other))
    with pytest.raises(SystemExit, match=r"holds variant 'base' trained with other settings "
                                         r"\(model.image_size: 192 -> 224\); use another --out"):
        script.run_variant("ham10000_cpu", str(tmp_path), [], "base", [], 3, tmp_path / "out")
    with pytest.raises(SystemExit, match=r"training.folds: 3 -> 5"):
        script.run_variant("ham10000_cpu", str(tmp_path), [], "base", [], 5, tmp_path / "out")
    (folder / "config.yaml").write_text(dump_config(load_config(resolve_config_path("ham10000_cpu"), settings)))
    row = script.run_variant("ham10000_cpu", str(tmp_path), [], "base", [], 3, tmp_path / "out")
    assert row["out_of_fold"]["balanced_accuracy"] == 0.5      # the same settings: reused, not retrained


def test_the_data_folder_is_taken_as_named(tmp_path, monkeypatch):
    """--data went through the YAML overrides: a folder named "scans #2" became "scans" (a comment)."""
    script = load_script("compare_recipes")
    data = tmp_path / "scans #2"
    seen = {}

    def train_folds(config, folder, **kwargs):
        seen["path"] = config["data"]["path"]
        raise SystemExit("stop before training")

    monkeypatch.setattr(script, "train_folds", train_folds)
    with pytest.raises(SystemExit, match="stop before training"):
        script.run_variant("ham10000_cpu", str(data), [], "base", [], 3, tmp_path / "out")
    assert seen["path"] == str(data)


def test_a_variant_folder_trained_on_other_data_is_refused_by_name(tmp_path, monkeypatch):
    """The reuse check compared the recipe only: a rerun with another --data passed the old rows off as new."""
    from dermalens.config_files import resolve_config_path

    script = load_script("compare_recipes")
    folder = tmp_path / "out" / "base"
    finished_variant(folder)
    (tmp_path / "ham").mkdir()
    settings = ["training.folds=3", "training.ensemble=false"]
    recorded = load_config(resolve_config_path("ham10000_cpu"), [*settings, f"data.path={tmp_path / 'ham'}"])
    recorded["data"]["classes"] = CLASSES       # a run records the class set it read
    (folder / "config.yaml").write_text(dump_config(recorded))
    with pytest.raises(SystemExit, match=r"trained with other settings \(data.path: '.*ham' -> '.*other'\)"):
        script.run_variant("ham10000_cpu", str(tmp_path / "other"), [], "base", [], 3, tmp_path / "out")
    with pytest.raises(SystemExit, match=r"data.test_sources: \[\] -> \['rosendahl'\]"):
        script.run_variant("ham10000_cpu", str(tmp_path / "ham"), ["data.test_sources=rosendahl"], "base", [], 3,
                           tmp_path / "out")
    with pytest.raises(SystemExit, match=r"data.classes: \['akiec'.*\] -> \['mel', 'nv'\]"):
        script.run_variant("ham10000_cpu", str(tmp_path / "ham"), ["data.classes=[mel, nv]"], "base", [], 3,
                           tmp_path / "out")
    monkeypatch.chdir(tmp_path)   # the same folder named relatively: reused
    row = script.run_variant("ham10000_cpu", "ham", [], "base", [], 3, tmp_path / "out")
    assert row["out_of_fold"]["balanced_accuracy"] == 0.5


def test_every_variant_and_setting_is_checked_before_any_training(tmp_path, monkeypatch, capsys):
    """A bad second --variant failed after the first had trained; a bad override or --folds 1 ended in a
    traceback."""
    script = load_script("compare_recipes")

    def no_training(*_args, **_kwargs):
        raise AssertionError("trained before every variant was checked")

    monkeypatch.setattr(script, "train_folds", no_training)
    base = ["--config", "ham10000_cpu", "--data", str(tmp_path), "--out", str(tmp_path / "out")]
    assert script.main([*base, "--variant", "base", "--variant", "x: sampler.power"]) == 2
    assert "error: --variant 'x': override 'sampler.power' must look like section.key=value" in \
        capsys.readouterr().err
    assert script.main([*base, "--variant", "base", "--variant", "x: nosuch.key=1"]) == 2
    assert "error: --variant 'x': unknown config key 'nosuch'" in capsys.readouterr().err
    assert script.main([*base, "--variant", "base", "--set", "training.max_epochs"]) == 2
    assert "error: override 'training.max_epochs' must look like section.key=value" in capsys.readouterr().err
    assert script.main([*base, "--variant", "base", "--folds", "1"]) == 2
    assert "error: --folds must be 2 or more" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # A --config or --set error is named as such, not as the first variant's.
    assert script.main([*base[:1], "nosuchcfg", *base[2:], "--variant", "A: training.max_epochs=2"]) == 2
    assert "error: config not found: nosuchcfg" in capsys.readouterr().err
    assert script.main([*base, "--variant", "A: training.max_epochs=2", "--set", "training.max_epoch=3"]) == 2
    assert "error: unknown config key 'training.max_epoch'" in capsys.readouterr().err
    # A --set that only holds with each variant's own settings is no error (it was, checked alone).
    assert script.main([*base, "--set", "scheduler.name=plateau", "--existing-only",
                        "--variant", "by loss: training.monitor=val/loss, training.monitor_mode=min",
                        "--variant", "by bacc: training.monitor=val/balanced_accuracy"]) == 0
