"""Training augmentation: one seed gives one stream of augmentations, borders are reflected, evaluation is exact.

Same-seed runs (tests/test_runs.py) and the frozen-trunk cache (one seed per
image and view) rely on `build_train_transform(..., seed)` and
`set_random_seed` giving the same tensors, and on the pipeline leaving the
global random streams alone. A black border after a rotation is a shortcut
a model can learn (real dermoscopy vignettes are black too), hence the border check.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.requirements import Requirement

from dermalens.config import AugmentationSection
from dermalens.data.geometry import fit_to_square
from dermalens.data.preprocess import Preprocessing, preprocess_array
from dermalens.data.readers.images import decode_image_file
from dermalens.data.transforms import build_eval_transform, build_train_transform

pytestmark = pytest.mark.unit
SIZE = 96
PRE = Preprocessing(SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# configs/ham10000_cpu.yaml's augmentation, with the colour jitter a colour-robust run would add.
RECIPE = AugmentationSection(rotate=180, zoom=0.15, shift=0.1, brightness=0.15, contrast=0.15, hue=10.0,
                             saturation=0.2, gamma=0.2, hflip=True, vflip=True, probability=0.8)


@pytest.fixture(scope="module")
def images(sample_dir: Path) -> list[np.ndarray]:
    paths = sorted(sample_dir.glob("ISIC_*.jpg"))[:6]
    assert len(paths) == 6, f"expected the HAM10000 sample photos in {sample_dir}"
    return [fit_to_square(decode_image_file(p), SIZE, "center_square") for p in paths]


def augmented(transform, images: list[np.ndarray]) -> list[torch.Tensor]:
    return [transform(image=image)["image"] for image in images]


def test_one_seed_gives_the_same_augmentations_in_two_builds_and_two_seeds_differ(images):
    first = augmented(build_train_transform(PRE, RECIPE, seed=11), images)
    again = augmented(build_train_transform(PRE, RECIPE, seed=11), images)
    other = augmented(build_train_transform(PRE, RECIPE, seed=12), images)
    for a, b in zip(first, again):
        assert a.dtype == torch.float32 and a.shape == (3, SIZE, SIZE)
        assert torch.equal(a, b)
    assert sum(not torch.equal(a, b) for a, b in zip(first, other)) >= len(images) - 1
    # Augmentation happened: not the evaluation view.
    evaluation = build_eval_transform(PRE)
    assert all(not torch.equal(a, evaluation(image=i)["image"]) for a, i in zip(first, images))


def test_set_random_seed_restarts_the_stream_and_the_global_streams_are_left_alone(images):
    """What LesionDataModule.reseed_augmentation and the frozen trunk's per-view seeds rely on."""
    transform = build_train_transform(PRE, RECIPE, seed=3)
    first = augmented(transform, images)
    later = augmented(transform, images)
    assert any(not torch.equal(a, b) for a, b in zip(first, later)), "the stream should move on between calls"
    torch.manual_seed(0)
    np.random.seed(0)
    expected = torch.rand(3), np.random.rand(3)
    torch.manual_seed(0)
    np.random.seed(0)
    transform.set_random_seed(3)
    restarted = augmented(transform, images)
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert all(torch.equal(a, b) for a, b in zip(first, restarted))


def test_rotated_borders_are_reflected_not_filled(images):
    """Every draw rotates (up to 45 degrees, no zoom-in to hide the corners); a non-black image
    must show no fill level anywhere, and the corners must hold the image's own pixels."""
    rotate_only = AugmentationSection(rotate=45, zoom=0.0, shift=0.0, brightness=0, contrast=0, hflip=False,
                                      vflip=False, probability=1.0)
    photo = np.maximum(images[0], 60).astype(np.uint8)
    mean, std = np.asarray(PRE.mean)[:, None, None], np.asarray(PRE.std)[:, None, None]
    for seed in range(6):
        out = build_train_transform(PRE, rotate_only, seed=seed)(image=photo)["image"].numpy()
        levels = (out * std + mean) * 255
        assert not np.allclose(levels, photo.transpose(2, 0, 1), atol=1), "nothing was rotated"
        assert levels.min() > 59, f"seed {seed}: a level of {levels.min():.1f} in a photo whose darkest is 60"
        corners = levels[:, [0, 0, -1, -1], [0, -1, 0, -1]]
        assert np.all(corners > 59), f"seed {seed}: corner levels {corners.round(1).tolist()}"


def test_a_zero_probability_pipeline_only_flips_and_normalises_exactly(images):
    flips_only = replace(RECIPE, probability=0.0, hflip=False, vflip=False)
    transform = build_train_transform(PRE, flips_only, seed=0)
    for image in images:
        np.testing.assert_array_equal(transform(image=image)["image"].numpy(), preprocess_array(image, PRE))


def test_the_evaluation_transform_is_bit_identical_to_preprocess_array(images):
    """What training evaluates on and what the ONNX predictor and server compute, to the last bit."""
    rng = np.random.default_rng(0)
    evaluation = build_eval_transform(PRE)
    for image in [*images, rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)]:
        np.testing.assert_array_equal(evaluation(image=image)["image"].numpy(), preprocess_array(image, PRE))


def test_albumentations_is_pinned_to_the_releases_under_its_mit_licence():
    """2.0.8 is the last MIT release; a later one must not be installed by a loosened bound."""
    tomllib = pytest.importorskip("tomllib")   # Python 3.11+
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    lines = [d for d in pyproject["project"]["dependencies"] if re.match(r"albumentations\b", d)]
    assert len(lines) == 1, lines
    specifier = Requirement(lines[0]).specifier
    assert all(specifier.contains(v) for v in ("2.0.0", "2.0.8")), lines[0]
    assert not any(specifier.contains(v) for v in ("2.0.9", "2.1.0", "3.0.0", "2.0.8.post1")), lines[0]
