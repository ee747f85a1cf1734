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


def test_source_power_evens_the_sources_within_each_class_and_leaves_the_class_draws_alone():
    """A source that holds most images of one class (rosendahl and akiec) lets a model learn its device's look
    as the class; sampler.source_power 0 draws each source of a class as often as the others."""
    labels = np.array([0] * 100 + [0] * 10 + [1] * 300 + [1] * 30)
    import pandas as pd

    sources = np.array(["rosendahl"] * 100 + ["vidir"] * 10 + ["vidir"] * 300 + [None, float("nan"), pd.NA] * 10,
                       dtype=object)
    as_in_the_data = ClassBalancedSampler(labels, samples_per_class=200, seed=3, groups=sources, group_power=1.0)
    assert list(as_in_the_data) == list(ClassBalancedSampler(labels, samples_per_class=200, seed=3))  # no change
    even = ClassBalancedSampler(labels, samples_per_class=200, seed=3, groups=sources, group_power=0.0)
    drawn = np.array(list(even))
    assert len(drawn) == len(even) == 400
    assert np.bincount(labels[drawn]).tolist() == [200, 200]                 # the class draws as before
    for label in (0, 1):
        drawn_sources = sources[drawn[labels[drawn] == label]]
        named = ["-" if pd.isna(source) else source for source in drawn_sources]
        names, counts = np.unique(named, return_counts=True)
        assert counts.tolist() == [100, 100], (label, names)                # None and NaN: one "no source"
    half = ClassBalancedSampler(labels, samples_per_class=200, seed=3, groups=sources, group_power=0.5)
    class_0 = np.array(list(half))
    class_0 = class_0[labels[class_0] == 0]
    # One draw each, the other 198 split 10 : sqrt(10) (sqrt(100) : sqrt(10)) by largest remainder: 150.4 + 1.
    assert (sources[class_0] == "rosendahl").sum() == 151 and len(class_0) == 200
    # The class keeps exactly its draws however the shares round (three sources of 70, 70 and 69 here)...
    three = ClassBalancedSampler(np.zeros(9, int), samples_per_class=209, groups=list("aaabbbccc"), group_power=0.0)
    assert len(list(three)) == len(three) == 209
    # ...and a "source" per image, which would leave a class more sources than draws, is refused by name.
    with pytest.raises(ValueError, match="a class has 9 sources and 5 draws an epoch"):
        ClassBalancedSampler(np.zeros(9, int), samples_per_class=5, groups=list("abcdefghi"), group_power=0.0)
    with pytest.raises(ValueError, match="3 groups for 440 labels"):
        ClassBalancedSampler(labels, samples_per_class=200, groups=["a", "b", "c"], group_power=0.0)
    with pytest.raises(ConfigError, match="sampler.source_power=0.5 reweights the class-balanced sampler, which "
                                          "sampler.balanced=false turns off"):
        load_config(None, ["sampler.source_power=0.5", "sampler.balanced=false", "data.path=/x"])


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

    from dermalens.config import (
        DEFAULTS,
        AugmentationSection,
        OptimizerSection,
        RunConfig,
        SamplerSection,
        TrainingSection,
    )
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
    # Image training hands each row's source to the sampler too.
    datamodule = LesionDataModule(np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4, int), np.array(["train"] * 4),
                                  Preprocessing(8, (0.5,) * 3, (0.5,) * 3), augmentation=AugmentationSection(),
                                  sampler=SamplerSection(samples_per_class=30, source_power=0.0),
                                  training=TrainingSection(num_workers=0), seed=0, sources=np.array(["a", "a", "a", "b"]))
    drawn = list(datamodule.train_dataloader().sampler)
    assert drawn.count(3) == 15


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
