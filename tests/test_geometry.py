"""The geometry policy: how a photo of any size becomes the model's square input, and back."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from dermalens.data.geometry import CENTER_SQUARE, SQUASH, crop_box, fit_to_square, map_to_image, resize_image
from dermalens.data.preprocess import Preprocessing
from dermalens.explain.overlay import heatmap_at_size

pytestmark = pytest.mark.unit


def test_center_square_keeps_the_middle_of_a_landscape_photo():
    image = np.zeros((450, 600, 3), dtype=np.uint8)
    image[:, 75:525] = 200          # the centre 450x450 square is bright, the side bands black
    out = fit_to_square(image, 224, CENTER_SQUARE)
    assert out.shape == (224, 224, 3)
    assert out.min() == 200         # no black band survived the crop
    squashed = fit_to_square(image, 224, SQUASH)
    assert squashed.min() == 0      # squashing keeps the bands (and distorts the aspect)


def test_center_square_equals_crop_then_resize():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    assert crop_box(300, 500, CENTER_SQUARE) == (0, 100, 300, 300)
    assert crop_box(500, 300, CENTER_SQUARE) == (100, 0, 300, 300)
    np.testing.assert_array_equal(fit_to_square(image, 96, CENTER_SQUARE), resize_image(image[:, 100:400], 96))


def test_heatmap_lands_on_the_pixels_it_came_from():
    # A hot spot in the top-left quarter of the model's square input...
    square = np.zeros((8, 8), dtype=np.float32)
    square[:4, :4] = 1.0
    heat = heatmap_at_size(square, 450, 600, geometry=CENTER_SQUARE)
    assert heat.shape == (450, 600)
    # ...is in the top-left quarter of the centre square of the upload (columns 75-300, rows 0-225),
    assert heat[:100, 80:180].min() > 0.9
    # never in the side bands the model did not see,
    assert not heat[:, :75].any() and not heat[:, 525:].any()
    # and not in the other quarters of the square.
    assert heat[250:, 320:520].max() < 0.1
    squashed = map_to_image(square, 450, 600, SQUASH)
    assert squashed[:100, :140].min() > 0.9         # squash stretches the map over the whole image


def test_unknown_policy_is_named():
    with pytest.raises(ValueError, match="unknown geometry policy 'fish'"):
        fit_to_square(np.zeros((4, 4, 3), np.uint8), 2, "fish")


def test_preprocessing_records_the_policy_and_reads_old_records_as_squash():
    pre = Preprocessing(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), CENTER_SQUARE)
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    legacy = {"image_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert Preprocessing.from_dict(legacy).geometry == SQUASH


def test_an_enlarged_image_is_the_same_picture_with_or_without_intel_ipp():
    """x86 OpenCV wheels resize INTER_CUBIC through Intel IPP, whose rounding differs from OpenCV's own
    code (ARM builds, the in-browser page) in a few per cent of the pixels: dermalens uses OpenCV's own
    code everywhere, and leaves the calling thread's IPP switch as it found it."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (100, 180, 3), dtype=np.uint8)
    used = cv2.ipp.useIPP()
    try:
        cv2.ipp.setUseIPP(True)
        ipp_available = cv2.ipp.useIPP()   # False on builds without IPP
        with_ipp = fit_to_square(small, 224, "squash")
        assert cv2.ipp.useIPP() == ipp_available
        cv2.ipp.setUseIPP(False)
        without_ipp = fit_to_square(small, 224, "squash")
        assert not cv2.ipp.useIPP()
        opencv_own = cv2.resize(small, (224, 224), interpolation=cv2.INTER_CUBIC)
    finally:
        cv2.ipp.setUseIPP(used)
    assert np.array_equal(with_ipp, without_ipp), int(np.count_nonzero(with_ipp != without_ipp))
    assert np.array_equal(without_ipp, opencv_own)
