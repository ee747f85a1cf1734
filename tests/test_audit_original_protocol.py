"""scripts/audit_original_protocol.py: the pool and the arms are reused only with the settings that made them."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from support.scripts import load_script

pytestmark = pytest.mark.unit


@pytest.fixture
def script(monkeypatch):
    module = load_script("audit_original_protocol")

    def no_training(*_args, **_kwargs):
        raise AssertionError("trained or augmented again")

    monkeypatch.setattr(module, "train", no_training)
    monkeypatch.setattr(module, "open_dataset", no_training)
    yield module
    sys.modules.pop("audit_original_protocol", None)


def made_audit(script, out: Path, data: Path, per_class: int = 1000, minutes: float = 10.0, seed: int = 0) -> None:
    """An OUT as a finished audit leaves it: the pool and both arms, each with the settings that made them."""
    common = {"data": str(data.resolve()), "config": "ham10000_cpu", "seed": seed, "overrides": []}
    pool_settings = {**common, "per_class": per_class}
    metrics = {"accuracy": 0.8, "balanced_accuracy": 0.7, "macro_f1": 0.6, "auc_macro": 0.9, "n_samples": 10,
               "per_class": {code: {"f1": 0.5} for code in script.PER_CLASS_F1}}
    for folder, settings in ((out / "augmented_pool", pool_settings),
                             (out / "original_protocol", {**pool_settings, "minutes": minutes}),
                             (out / "lesion_grouped", {**common, "minutes": minutes})):
        folder.mkdir(parents=True)
        (folder / script.SETTINGS_FILE).write_text(json.dumps(settings))
    (out / "augmented_pool" / script.HAM10000_METADATA).write_text("lesion_id,image_id,dx\n")
    for arm in ("original_protocol", "lesion_grouped"):
        (out / arm / "metrics.json").write_text(json.dumps(metrics))


def test_a_rerun_with_other_settings_is_refused_and_the_same_settings_reuse_everything(script, tmp_path):
    """The pool and both arms were reused whatever --per-class, --seed, --minutes or --set said, and audit.json
    recorded the new settings beside the old figures."""
    data, out = tmp_path / "ham", tmp_path / "out"
    data.mkdir()
    made_audit(script, out, data)
    base = ["--data", str(data), "--out", str(out)]
    with pytest.raises(SystemExit, match=r"augmented_pool holds an augmented pool made with other settings "
                                         r"\(per_class: 1000 -> 50\); use another --out"):
        script.main([*base, "--per-class", "50"])
    with pytest.raises(SystemExit, match=r"seed: 0 -> 3"):
        script.main([*base, "--seed", "3"])
    with pytest.raises(SystemExit, match=r"overrides: \[\] -> \['evaluation.tta=false'\]"):
        script.main([*base, "--set", "evaluation.tta=false"])
    with pytest.raises(SystemExit, match=r"original_protocol holds the audit_original_protocol arm made with other "
                                         r"settings \(minutes: 10.0 -> 2.0\)"):
        script.main([*base, "--minutes", "2"])
    assert not (out / "audit.json").exists()
    assert script.main(base) == 0
    assert json.loads((out / "audit.json").read_text())["settings"]["per_class"] == 1000


def test_a_pool_made_before_settings_were_recorded_is_refused(script, tmp_path):
    data, out = tmp_path / "ham", tmp_path / "out"
    data.mkdir()
    made_audit(script, out, data)
    (out / "augmented_pool" / script.SETTINGS_FILE).unlink()
    with pytest.raises(SystemExit, match=r"records no settings \(audit_settings.json; made by an older version"):
        script.main(["--data", str(data), "--out", str(out)])


def test_a_failed_first_attempt_does_not_block_the_corrected_rerun(script, tmp_path):
    """The settings were recorded before the pool was made: a run that failed (a wrong --data) left them, and
    the rerun with the right data was refused as if a finished pool of other settings were there."""
    pool = tmp_path / "out" / "augmented_pool"
    script.check_settings(pool, {"data": "wrong", "per_class": 2}, "an augmented pool", made=False)
    script.check_settings(pool, {"data": "right", "per_class": 2}, "an augmented pool", made=False)
    assert json.loads((pool / script.SETTINGS_FILE).read_text())["data"] == "right"
    with pytest.raises(SystemExit, match=r"data: 'right' -> 'other'"):
        script.check_settings(pool, {"data": "other", "per_class": 2}, "an augmented pool", made=True)
