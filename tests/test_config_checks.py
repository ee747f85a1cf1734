"""Settings that would fail a run after its data was read, or train nothing, are refused when the config loads."""
from __future__ import annotations

import pytest

from dermalens.config import MONITORED_METRICS, ConfigError, load_config, recipe_differences

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("override, named", [
    ("training.monitor=val/balanced_acc", "'training.monitor' must be null or one of val/loss"),
    ("training.monitor=train/loss", "'training.monitor' must be null or one of"),
    ("training.limit_val_batches=0", "training.limit_val_batches=0 runs no validation, which training.monitor"),
    ("training.limit_train_batches=0", "'training.limit_train_batches' must be a positive number of batches"),
    ("training.limit_train_batches=1.5", "'training.limit_train_batches' must be a fraction in (0, 1]"),
    ("training.max_time=00:00:00:00", "no time to train"),
    ("training.ema_decay=1.5", "'training.ema_decay' must be in (0, 1) or null, got 1.5"),
    ("training.checkpoint_every_n_steps=-1", "'training.checkpoint_every_n_steps' must be positive or null"),
    ("seed=-1", "'seed' must be in [0, 2^32), got -1"),
    ("loss.alpha=inverted", "'loss.alpha' must be inverse, inverse_sqrt, a list of numbers or null, got 'inverted'"),
    ("loss.alpha=[a, b, c, d, e, f, g]", "'loss.alpha' must list a non-negative number per class"),
])
def test_a_setting_that_would_fail_the_run_later_is_named_at_load(override, named):
    """Each of these passed the config and failed after the data was read (a KeyError, Lightning's refusal
    naming other settings, numpy's bounds, a missing last.ckpt), leaving a failed run folder."""
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert named in str(error.value)


@pytest.mark.parametrize("override, named", [
    ("optimizer.lr=inf", "'optimizer.lr' must be a finite number, got inf"),    # trained an epoch of NaN weights
    ("optimizer.lr=.nan", "'optimizer.lr' must be a finite number, got nan"),
    ("loss.gamma=nan", "'loss.gamma' must be a finite number"),
    ("sampler.power=-.inf", "'sampler.power' must be a finite number"),
    ("loss.alpha=[1, 1, 1, .inf, 1, 1, 1]", "'loss.alpha' must list a non-negative number per class"),
])
def test_numbers_that_are_not_finite_are_refused(override, named):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert named in str(error.value)


@pytest.mark.parametrize("value", ["[benign,malignant", "{", '"3', "*x", "!!python/object/apply:os.system [ls]"])
def test_an_override_that_is_not_yaml_is_named_not_a_traceback(value):
    with pytest.raises(ConfigError) as error:
        load_config(None, [f"training.max_epochs={value}"])
    assert f"override 'training.max_epochs={value}': the value" in str(error.value)


def test_config_files_refuse_a_key_written_twice_and_read_exponents_as_numbers(tmp_path):
    """PyYAML kept the second `training:` block and silently dropped the first; it read `lr: 1e-3` (YAML 1.1:
    no dot, no number) as a string, which the type check then refused although --set took it."""
    twice = tmp_path / "twice.yaml"
    twice.write_text("training:\n  max_epochs: 1\noptimizer:\n  lr: 0.01\ntraining:\n  batch_size: 8\n")
    with pytest.raises(ConfigError, match="the key 'training' is written twice"):
        load_config(twice)
    exponents = tmp_path / "exponents.yaml"
    exponents.write_text("optimizer:\n  lr: 1e-3\n  weight_decay: 5E-5\nname: 1e3-run\n")
    config = load_config(exponents)
    assert config["optimizer"]["lr"] == 1e-3 and config["optimizer"]["weight_decay"] == 5e-5
    assert config["name"] == "1e3-run"
    assert load_config(None, ["optimizer.lr=1e-3"])["optimizer"]["lr"] == config["optimizer"]["lr"]
    # A merge key still merges, and the mapping may override what it merged.
    merged = tmp_path / "merged.yaml"
    merged.write_text("optimizer: &opt\n  lr: 0.01\n  weight_decay: 0.0\nscheduler:\n  name: cosine\n")
    assert load_config(merged)["optimizer"]["lr"] == 0.01
    anchors = tmp_path / "anchors.yaml"
    anchors.write_text("augmentation: &aug {hue: 5}\ndata: {path: x}\n")
    assert load_config(anchors)["augmentation"]["hue"] == 5
    from dermalens.config import read_yaml
    assert read_yaml("base: &b {lr: 0.1, x: 1}\nopt:\n  <<: *b\n  lr: 0.2\n")["opt"] == {"lr": 0.2, "x": 1}


def test_a_config_written_by_a_run_reads_back_as_it_was(tmp_path):
    """A folder named 1e3 (given with --data, taken as written) was written unquoted into the run's config.yaml,
    which the exponent-reading loader then read back as the number 1000.0 and refused."""
    from dermalens.config import dump_config

    config = load_config(None, ["data.format=folder"], {"data": {"path": "1e3"}, "name": "2E5"})
    written = tmp_path / "config.yaml"
    written.write_text(dump_config(config))
    assert load_config(written) == config


def test_what_validation_can_be_monitored_is_what_training_logs():
    import torch

    from dermalens.training.module import validation_metrics

    metrics = validation_metrics(3)
    metrics.update(torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]]), torch.tensor([0, 1, 2]))
    assert set(MONITORED_METRICS) == {"val/loss", *(f"val/{name}" for name in metrics.compute())}


def test_an_unquoted_budget_is_read_as_written_and_no_validation_is_fine_without_a_monitor():
    # YAML 1.1 reads 12:00:00:00 as the base-60 integer 2592000.
    assert load_config(None, ["training.max_time=12:00:00:00"])["training"]["max_time"] == "12:00:00:00"
    assert load_config(None, ["training.max_time=1:02:03:04"])["training"]["max_time"] == "01:02:03:04"
    assert load_config(None, ["training.max_time=60:00:00:00"])["training"]["max_time"] == "60:00:00:00"
    config = load_config(None, ["training.monitor=null", "scheduler.name=cosine", "training.limit_val_batches=0"])
    assert config["training"]["limit_val_batches"] == 0


def test_settings_that_change_what_is_learnt_or_kept_are_recipe_differences():
    base = load_config(None, ["training.monitor=val/loss", "training.monitor_mode=min"])
    assert recipe_differences(base, load_config(None, ["training.monitor=val/loss", "training.monitor_mode=max"])) \
        == ["training.monitor_mode: 'min' -> 'max'"]
    assert recipe_differences(load_config(), load_config(None, ["training.limit_train_batches=0.1"])) == \
        ["training.limit_train_batches: None -> 0.1"]
