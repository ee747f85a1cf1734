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


def variant_config(tmp_path: Path, changes: list[str], *extra: str) -> dict:
    """The config the script trains a variant with (--config dermamnist_cpu, --data tmp_path)."""
    from dermalens.config import load_config
    from dermalens.config_files import resolve_config_path

    module = sys.modules["ablation"]
    return load_config(resolve_config_path("dermamnist_cpu"), [*extra, *changes, *module.UNFITTED],
                       {"data": {"path": str(tmp_path)}})


def test_without_a_bootstrap_the_interval_is_na_and_a_rerun_reuses_or_resumes_the_variants(script, monkeypatch,
                                                                                         tmp_path):
    """n_bootstrap=0 ended in a KeyError after training, and the rerun then met 'already holds checkpoints'."""
    import json

    from dermalens.config import dump_config
    from dermalens.run_folder import RunFolder

    assert run(script, monkeypatch, tmp_path, "--only", "CBAM off", "--set", "evaluation.n_bootstrap=0") == 0
    assert "| CBAM off | 0.700 | 0.500 (n/a) |" in (tmp_path / "out" / "ablation.md").read_text()

    # A finished variant (validation metrics written) is read back; an interrupted one is resumed.
    finished, interrupted = RunFolder(tmp_path / "out" / "model_cbam"), RunFolder(tmp_path / "out" / "loss_name")
    for folder, changes in ((finished, ["model.cbam=false"]), (interrupted, ["loss.name=cross_entropy"])):
        folder.checkpoints.mkdir(parents=True)
        (folder.checkpoints / "last.ckpt").write_bytes(b"")
        folder.config_file.write_text(dump_config(variant_config(tmp_path, changes)))
    finished.write_status("finished", best_checkpoint=str(finished.checkpoints / "best.ckpt"), train_seconds=120.0)
    finished.metrics_file.write_text(json.dumps(fake_metrics()))
    interrupted.write_status("interrupted", last_checkpoint=str(interrupted.checkpoints / "last.ckpt"))
    script.calls["train"].clear()
    assert run(script, monkeypatch, tmp_path, "--only", "CBAM off", "--only", "cross-entropy instead of focal") == 0
    [resumed] = script.calls["train"]
    assert resumed["run_dir"] == interrupted.path and resumed["resume"] is True
    table = (tmp_path / "out" / "ablation.md").read_text()
    assert "| CBAM off | 0.700 | 0.500 (0.400-0.600) | 0.450 | 0.850 | 0.300 | 0.300 | 2.0 |" in table

    # A variant from a version without a later setting (recorded nowhere, at the value it trained with) is this one.
    earlier = variant_config(tmp_path, ["model.cbam=false"])
    del earlier["sampler"]["source_power"]
    finished.config_file.write_text(dump_config(earlier))
    assert run(script, monkeypatch, tmp_path, "--only", "CBAM off") == 0

    # A variant folder trained with other settings is not passed off as this one.
    finished.config_file.write_text(dump_config(variant_config(tmp_path, ["model.cbam=false"], "seed=7")))
    with pytest.raises(SystemExit, match=r"model_cbam holds a variant trained with other settings \(seed: 7 -> 0\)"):
        run(script, monkeypatch, tmp_path, "--only", "CBAM off")


def test_an_unknown_only_name_is_refused_with_the_known_ones(script, monkeypatch, tmp_path, capsys):
    """--only "cbam off" wrote an empty table and returned 0."""
    with pytest.raises(SystemExit):
        run(script, monkeypatch, tmp_path, "--only", "cbam off")
    assert "--only 'cbam off': no such variant; the variants are 'base (config as is)', 'CBAM off'" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not script.calls["train"]
