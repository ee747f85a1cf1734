"""The frozen trunk's activation cache: what it holds, and that building it leaves the model alone.

Training on cached activations is only right if the cache holds what the
trained model's own trunk computes in eval mode, the trunk the checkpoint
ships: a cache made from a trunk whose batch-norm statistics moved (a
train-mode forward pass) would train the head on features no deployed
model computes.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dermalens.config import AugmentationSection
from dermalens.data.preprocess import preprocess_array
from dermalens.models.classifier import create_classifier
from dermalens.training.frozen_trunk import FLIP_VIEWS, TrunkActivations, TrunkSpec, trunk_identity

pytestmark = pytest.mark.unit
SETTINGS = {"backbone": "tf_efficientnet_lite0", "image_size": 64, "cbam": True, "drop_path_rate": 0.2}
AUGMENTATION = AugmentationSection(rotate=90, zoom=0.1, shift=0.1, brightness=0.1, contrast=0.1, hflip=True,
                                   vflip=True, probability=0.8)
STAGES = 3


def model(seed: int = 0):
    torch.manual_seed(seed)
    return create_classifier(load_pretrained=False, **SETTINGS)   # in train mode, as a fresh training module's is


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)


def test_building_a_cache_leaves_the_model_in_its_mode_with_its_statistics(images, tmp_path):
    trained = model()
    before = trunk_identity(trained, STAGES)
    TrunkActivations(trained, images, TrunkSpec(STAGES, 2, seed=0), AUGMENTATION, cache_dir=tmp_path, progress=False)
    assert trained.training
    assert trunk_identity(trained, STAGES) == before


def test_two_models_with_one_trunk_share_one_cache(images, tmp_path):
    """Cross-validation builds the pool's cache, then each fold's training module asks again: one file."""
    first, second = model(), model()
    torch.manual_seed(123)      # other random draws (drop-path) before the second build
    caches = [TrunkActivations(m, images, TrunkSpec(STAGES, 2, seed=0), AUGMENTATION, cache_dir=tmp_path,
                               progress=False) for m in (first, second)]
    assert caches[0].array_path == caches[1].array_path
    caches[0].ensure(range(len(images)), range(caches[0].spec.views))
    caches[1].ensure(range(len(images)), range(caches[1].spec.views))
    assert caches[1].seconds_computing == 0.0          # found, not computed again
    assert len(list(tmp_path.glob("*.npy"))) == 2      # the activations and their done-table
    # ... read through one mapping: a mapping per fold would count the file once per fold in the RSS.
    assert caches[0].array is caches[1].array
    mapped = [line for line in Path("/proc/self/maps").read_text().splitlines()
              if line.endswith(str(caches[0].array_path))]
    assert len(mapped) == 1


def test_cached_flip_views_are_the_trunks_eval_forward_and_augmented_views_are_seeded(images, tmp_path):
    trained = model()
    spec = TrunkSpec(STAGES, 2, seed=0)
    cache = TrunkActivations(trained, images, spec, AUGMENTATION, cache_dir=tmp_path, progress=False)
    cache.ensure(range(len(images)), range(spec.views))
    trained.eval()
    flips = [lambda a: a, lambda a: a[:, ::-1], lambda a: a[::-1], lambda a: a[::-1, ::-1]]
    for row in (0, 3):
        for view in range(FLIP_VIEWS):
            x = torch.from_numpy(preprocess_array(np.ascontiguousarray(flips[view](images[row])),
                                                  trained.preprocessing))[None]
            with torch.inference_mode():
                expected = trained.forward_trunk(x, STAGES)[0].numpy()
            np.testing.assert_allclose(cache.array[row, view].astype(np.float32), expected, rtol=1e-2, atol=2e-2)
    # Augmented views: a draw of their own per (seed, image, view), the same in another cache of the same key.
    assert not np.array_equal(cache.array[0, FLIP_VIEWS], cache.array[0, FLIP_VIEWS + 1])
    np.testing.assert_array_equal(cache.view_input(2, FLIP_VIEWS), cache.view_input(2, FLIP_VIEWS))


def test_validation_during_training_reads_one_view_per_image_and_computes_no_other(images, tmp_path):
    """Each epoch validates on the identity view (as image training validates on the image): the flip
    views the run is scored with come after training, and the epoch does not pay for them."""
    from dermalens.config import SamplerSection, TrainingSection
    from dermalens.training.activation_data import ActivationDataModule

    cache = TrunkActivations(model(), images, TrunkSpec(STAGES, 2, seed=0), AUGMENTATION, cache_dir=tmp_path,
                             progress=False)
    split = np.array(["train", "train", "val", "train", "val"])
    data = ActivationDataModule(cache, np.array([0, 1, 0, 1, 1]), split, sampler=SamplerSection(balanced=False),
                                training=TrainingSection(eval_batch_size=8), seed=0)
    done = cache._done()
    assert done[[0, 1, 3]].all()                                         # training rows: every view
    assert done[[2, 4], 0].all() and not done[[2, 4], 1:].any()          # validation rows: the identity view only
    (batch, labels), = list(data.val_dataloader())
    assert batch.shape == (2, *cache.array.shape[2:]) and labels.tolist() == [0, 1]
    np.testing.assert_array_equal(batch.numpy(), cache.array[[2, 4], 0].astype(np.float32))


def test_training_on_activations_draws_the_sources_as_sampler_source_power_says(images, tmp_path):
    from dermalens.config import SamplerSection, TrainingSection
    from dermalens.training.activation_data import ActivationDataModule

    cache = TrunkActivations(model(), images, TrunkSpec(STAGES, 2, seed=0), AUGMENTATION, cache_dir=tmp_path,
                             progress=False)
    sources = np.array(["a", "a", "a", "b", None], dtype=object)
    labels, split = np.array([0, 0, 0, 0, 1]), np.array(["train"] * 5)

    def drawn_sources(source_power: float) -> list:
        data = ActivationDataModule(cache, labels, split, training=TrainingSection(), seed=0, sources=sources,
                                    sampler=SamplerSection(samples_per_class=40, source_power=source_power))
        positions = np.array(list(data.train_dataloader().sampler)) // cache.spec.views
        return sources[positions][labels[positions] == 0].tolist()

    assert drawn_sources(0.0).count("b") == 20                          # half of class 0's 40 draws
    assert drawn_sources(1.0).count("b") < 20                           # as in the data: about a quarter


def test_under_ddp_each_rank_validates_its_own_images_and_none_twice(images, tmp_path):
    """Three validation images on two processes: shards of 2 and 1, not Lightning's padded 2 + 2 (which
    counts one image twice in the synced validation metrics)."""
    from types import SimpleNamespace

    from dermalens.config import SamplerSection, TrainingSection
    from dermalens.training.activation_data import ActivationDataModule

    cache = TrunkActivations(model(), images, TrunkSpec(STAGES, 2, seed=0), AUGMENTATION, cache_dir=tmp_path,
                             progress=False)
    split = np.array(["train", "val", "val", "train", "val"])
    data = ActivationDataModule(cache, np.array([0, 1, 0, 1, 1]), split, sampler=SamplerSection(balanced=False),
                                training=TrainingSection(eval_batch_size=8), seed=0)
    shards = []
    for rank in (0, 1):
        data.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        loader = data.val_dataloader()
        shards.append(list(loader.sampler))
        assert sum(len(labels) for _, labels in loader) == len(shards[-1])
    assert sorted(shards[0] + shards[1]) == [0, 1, 2] and len(shards[0]) + len(shards[1]) == 3


def test_the_trunk_cache_stays_inside_the_cache_folder_one_names(tmp_path, monkeypatch):
    from dermalens.training.run import trunk_cache_dir

    monkeypatch.setenv("DERMALENS_CACHE", str(tmp_path / "per-user"))
    assert trunk_cache_dir({"data": {"cache_dir": "auto"}}) == tmp_path / "per-user" / "trunk-activations"
    named = tmp_path / "projects" / "my-cache"
    assert trunk_cache_dir({"data": {"cache_dir": str(named)}}) == named / "trunk-activations"   # not projects/
    private = trunk_cache_dir({"data": {"cache_dir": None}})
    assert private.is_dir() and private.name.startswith("dermalens-trunk-")
    private.rmdir()


def test_the_private_trunk_folder_of_a_run_without_caching_goes_when_the_process_ends(tmp_path):
    """With caching off, the activations lived in a temporary folder nothing removed (1.5 GB a recipe run)."""
    script = ("from dermalens.training.run import trunk_cache_dir\n"
              "private = trunk_cache_dir({'data': {'cache_dir': None}})\n"
              "(private / 'activations.npy').write_bytes(bytes(1000))\n"
              "print(private)\n")
    source = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(source)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    private = Path(done.stdout.strip().splitlines()[-1])
    assert private.parent == tmp_path and private.name.startswith("dermalens-trunk-")
    assert not private.exists() and list(tmp_path.iterdir()) == []
