"""scripts/ablation.py: the variants' table is scored on validation images nothing was fitted on."""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from support.scripts import load_script

pytestmark = pytest.mark.unit

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def fake_metrics(n_bootstrap: int = 10) -> dict:
    """What evaluate_checkpoint returns, with or without bootstrap intervals."""
    ci95 = {"balanced_accuracy": [0.4, 0.6]} if n_bootstrap else {}
    return {"accuracy": 0.7, "balanced_accuracy": 0.5, "macro_f1": 0.45, "auc_macro": 0.85, "split": "val",
            "per_class": {code: {"f1": 0.3} for code in CLASSES}, "ci95": ci95}


@pytest.fixture
def script(monkeypatch):
    """The script with training and evaluation replaced by fakes that record what they were given."""
    module = load_script("ablation")
    calls = {"train": [], "evaluate": []}

    def train(config, run_dir, **kwargs):
        calls["train"].append({"config": config, "run_dir": Path(run_dir), **kwargs})
        return SimpleNamespace(best_checkpoint=Path(run_dir) / "checkpoints" / "best.ckpt", train_seconds=60.0)

    def evaluate_checkpoint(config, checkpoint, out_dir, split=None, **kwargs):
        calls["evaluate"].append(split)
        return fake_metrics(config["evaluation"]["n_bootstrap"])

    monkeypatch.setattr(module, "train", train)
    monkeypatch.setattr(module, "evaluate_checkpoint", evaluate_checkpoint)
    module.calls = calls
    yield module
    sys.modules.pop("ablation", None)


def run(script, monkeypatch, tmp_path: Path, *extra: str):
    argv = ["--data", str(tmp_path), "--out", str(tmp_path / "out"), *extra]
    monkeypatch.setattr(sys, "argv", ["ablation.py", *argv])
    return script.main(argv)


def test_no_decision_rule_or_temperature_is_fitted_on_the_validation_split_the_table_scores(script, monkeypatch,
                                                                                         tmp_path):
    """Training fits its rule on the validation split: scored there with that rule, the table was inflated."""
    run(script, monkeypatch, tmp_path, "--only", "CBAM off",
        "--set", "evaluation.decision_rule=balanced", "--set", "evaluation.after_training=true")
    [call] = script.calls["train"]
    evaluation = call["config"]["evaluation"]
    assert evaluation["decision_rule"] == "raw" and evaluation["melanoma_specificity"] is None
    assert evaluation["temperature_scaling"] is False and evaluation["after_training"] is False
    assert script.calls["evaluate"] == ["val"]
    assert "raw argmax" in (tmp_path / "out" / "ablation.md").read_text()
