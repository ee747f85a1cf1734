import numpy as np
import pytest

from dermalens.config import ConfigError, load_config, parse_override
from dermalens.data.sampler import ClassBalancedSampler


def test_balanced_sampler_draws_n_per_class_and_changes_each_epoch():
    labels = np.array([5] * 500 + [3] * 7 + [0] * 40)
    sampler = ClassBalancedSampler(labels, samples_per_class=100, num_classes=7, seed=1)
    first = list(sampler)
    assert len(first) == len(sampler) == 300
    counts = np.bincount(labels[first], minlength=7)
    assert counts[5] == counts[3] == counts[0] == 100
    assert len(set(np.array(first)[labels[first] == 5])) == 100  # majority: no replacement
    second = list(sampler)
    assert first != second
    again = ClassBalancedSampler(labels, samples_per_class=100, num_classes=7, seed=1)
    assert list(again) == first


def test_config_overrides_and_unknown_keys(tmp_path):
    cfg = load_config(None, ["training.max_epochs=3", "model.backbone=tf_efficientnet_lite0", "data.path=/x"])
    assert cfg["training"]["max_epochs"] == 3 and cfg["model"]["backbone"] == "tf_efficientnet_lite0"
    assert parse_override("loss.alpha=[1, 2]") == {"loss": {"alpha": [1, 2]}}
    with pytest.raises(ConfigError, match="unknown config key 'training.max_epoch'"):
        load_config(None, ["training.max_epoch=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
