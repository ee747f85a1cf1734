import numpy as np
import pytest

from dermalens.config import ConfigError, load_config, parse_override
from dermalens.data.sampler import ClassBalancedSampler

pytestmark = pytest.mark.unit


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


# --- the typed config: one home for every default, every key checked at load -------------------------------


def test_every_key_has_one_typed_default_and_components_take_it():
    import dataclasses

    from dermalens.config import DEFAULTS, OptimizerSection, RunConfig, SamplerSection, TrainingSection
    from dermalens.data.datamodule import LesionDataModule
    from dermalens.data.preprocess import Preprocessing
    from dermalens.models.classifier import ModelConfig
    from dermalens.training.module import LesionClassifierModule

    assert DEFAULTS == dataclasses.asdict(RunConfig())
    # The model section's defaults are the classifier's (ModelConfig adds only the class count).
    assert {k: v for k, v in dataclasses.asdict(ModelConfig()).items() if k != "num_classes"} == DEFAULTS["model"]
    # A module given empty sections uses the config's defaults: weight decay 1e-5, not a default of its own.
    module = LesionClassifierModule(model={"backbone": "efficientnet_lite0", "image_size": 32, "pretrained": "none"},
                                    loss={}, optimizer={}, scheduler={}, training={}, class_counts=[1] * 7)
    group = module.configure_optimizers().param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (OptimizerSection().lr, DEFAULTS["optimizer"]["weight_decay"])
    assert module.plateau.patience == DEFAULTS["scheduler"]["patience"]
    with pytest.raises(Exception, match="unknown OptimizerSection key"):
        LesionClassifierModule(model={}, loss={}, optimizer={"momentum": 0.9}, scheduler={}, training={},
                               class_counts=[1] * 7, load_pretrained=False)
    # The datamodule has no defaults: it reads its sections.
    datamodule = LesionDataModule(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4) % 2, np.array(["train"] * 4),
                                  Preprocessing(8, (0.5,) * 3, (0.5,) * 3), augmentation=None,
                                  sampler=SamplerSection(), training=TrainingSection(), seed=0)
    assert (datamodule.batch_size, datamodule.samples_per_class) == (32, 3500)


@pytest.mark.parametrize("override, message", [
    ("training.batch_size=0", "'training.batch_size' must be positive"),
    ("training.max_epochs=two", "'training.max_epochs' must be an integer, got 'two'"),
    ("optimizer.lr=abc", "'optimizer.lr' must be a number, got 'abc'"),
    ("model.cbam=maybe", "'model.cbam' must be true or false"),
    ("data.val_fraction=1.5", "'data.val_fraction' must be in [0, 1)"),
    ("model.geometry=crop", "'model.geometry' must be one of center_square, squash"),
    ("training.devices=[0, 1]", None),
    ("training.limit_train_batches=0.5", None),
    ("training.limit_train_batches=null", None),
    ("training.max_epochs=null", "'training.max_epochs' must be an integer, got null"),
    ("data.classes=[mel]", "needs at least 2 classes"),
    ("data.classes=[mel, nv, mel]", "names mel more than once"),
    ("data.classes=some", "'data.classes' must be 'auto' or a list"),
    ("evaluation.split=holdout", "'evaluation.split' must be one of train, val, test, all"),
])
def test_wrong_values_are_named_at_load(override, message):
    if message is None:
        load_config(None, [override])
        return
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert message in str(error.value)


def test_every_shipped_config_loads_and_every_key_is_typed():
    from dermalens.cli import CONFIGS_DIR
    from dermalens.config import _SPECS, _leaves

    shipped = sorted(CONFIGS_DIR.glob("*.yaml"))
    assert len(shipped) >= 5
    for path in shipped:
        config = load_config(path)
        assert {key for key, _ in _leaves(config)} == set(_SPECS), path.name
