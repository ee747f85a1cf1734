"""How an image of any size and aspect becomes the model's square input.

The geometry is a named policy saved with the model (checkpoint and ONNX
metadata), so training, evaluation, prediction, explanation, serving and
export can only ever apply the same one:

- ``center_square``: crop the largest centred square, then resize. Real
  dermoscopy arrives at 600x450 (HAM10000, ISIC) or any other aspect, while
  the lesion sits in the middle; `ham10000_224` was built exactly this way
  (the centre 450x450 square of each official image), so a full-size photo
  and its training copy give the model the same pixels.
- ``squash``: resize the whole image to a square, distorting the aspect.
  Checkpoints made before the policy existed were trained this way, so a
  preprocessing record that names no policy means ``squash``.

`crop_box` says which pixels of the original the model saw; explanation
code uses it to put a heatmap back onto the right pixels of the upload.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

CENTER_SQUARE = "center_square"
SQUASH = "squash"
GEOMETRY_POLICIES = (CENTER_SQUARE, SQUASH)
LEGACY_GEOMETRY = SQUASH   # what a record without a policy was trained with


# Below this many pixels on its shorter side an image cannot show a lesion: predictions refuse it by name
# rather than answer from a few enlarged pixels (a 1 x 1 PNG once got "nv 78%").
MIN_IMAGE_SIDE = 16
# An answer on an image the model sees enlarged more than this is flagged: the model was trained and measured on
# images about its input size or larger. 3, not 2: the DermaMNIST recipe's own 28-px images reach its 64-px
# input at 2.3x, and a HAM10000 model shown a DermaMNIST thumbnail (8x) is the case this catches.
MAX_ENLARGEMENT = 3.0


class ImageTooSmallError(ValueError):
    """An image with fewer than MIN_IMAGE_SIDE pixels on its shorter side; the message names its size."""


def check_geometry(policy: str) -> str:
    if policy not in GEOMETRY_POLICIES:
        raise ValueError(f"unknown geometry policy {policy!r}; use one of {', '.join(GEOMETRY_POLICIES)}")
    return policy


def crop_box(height: int, width: int, policy: str) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) of the region the policy keeps."""
    check_geometry(policy)
    if policy == SQUASH or height == width:
        return 0, 0, height, width
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a whole RGB uint8 image to size x size (no crop: the aspect is squashed).

    INTER_AREA when the pixel count shrinks (averages, no aliasing),
    INTER_CUBIC when it grows (smoother than linear).
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H,W,3), got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return np.ascontiguousarray(image).copy()
    image = np.ascontiguousarray(image)
    if size * size <= height * width:
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return _resize_cubic_without_ipp(image, size)


def _resize_cubic_without_ipp(image: np.ndarray, size: int) -> np.ndarray:
    """INTER_CUBIC by OpenCV's own code, on every machine.

    x86 OpenCV wheels hand INTER_CUBIC to Intel IPP, which rounds one level
    apart from OpenCV's own code in a few per cent of the pixels; ARM builds
    and the in-browser page (web/preprocess.js) run OpenCV's own code. Turning
    IPP off here gives one picture everywhere. OpenCV keeps the switch per
    thread, so other threads' resizes are untouched.
    """
    used = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    try:
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC)
    finally:
        cv2.ipp.setUseIPP(used)


def fit_to_square(image: np.ndarray, size: int, policy: str) -> np.ndarray:
    """THE geometry of dermalens: RGB uint8 image of any size -> size x size, by `policy`."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"expected an RGB image of shape (H,W,3), got {image.shape}")
    top, left, crop_height, crop_width = crop_box(image.shape[0], image.shape[1], policy)
    return resize_image(image[top:top + crop_height, left:left + crop_width], size)


def map_to_image(square_map: np.ndarray, height: int, width: int, policy: str) -> np.ndarray:
    """A map over the model's square input, placed over the original image's pixels.

    The map is resized (bilinear) onto the crop box; pixels the model never
    saw (outside a centre square) get 0, not an invented value.
    """
    square_map = np.asarray(square_map, dtype=np.float32)
    top, left, crop_height, crop_width = crop_box(height, width, policy)
    placed = np.zeros((height, width), dtype=np.float32)
    placed[top:top + crop_height, left:left + crop_width] = cv2.resize(
        square_map, (crop_width, crop_height), interpolation=cv2.INTER_LINEAR)
    return placed


def check_large_enough(height: int, width: int, what: str = "image") -> None:
    """ImageTooSmallError naming the size when the shorter side is under MIN_IMAGE_SIDE pixels."""
    if min(int(height), int(width)) < MIN_IMAGE_SIDE:
        raise ImageTooSmallError(
            f"{what} is {int(width)} x {int(height)} pixels; a lesion needs at least {MIN_IMAGE_SIDE} pixels "
            "on the shorter side")


def enlargement(height: int, width: int, size: int, policy: str) -> float:
    """How many times the model's input enlarges the shorter side of the region `policy` keeps."""
    crop_height, crop_width = crop_box(int(height), int(width), policy)[2:]
    return int(size) / max(1, min(crop_height, crop_width))


def resolution_caution(height: int, width: int, size: int, policy: str) -> str | None:
    """A sentence for answers on an image the model sees enlarged more than MAX_ENLARGEMENT, else None."""
    factor = enlargement(height, width, size, policy)
    if factor <= MAX_ENLARGEMENT:
        return None
    # Halves rounded up, as JavaScript's toFixed does: the in-browser page (web/page.js) writes the same words.
    shown = math.floor(factor * 10 + 0.5) / 10
    return (f"low resolution: {int(width)} x {int(height)} px, enlarged {shown:.1f}x to the model's "
            f"{int(size)}-px input, far from the images it was trained and measured on; the answer is unreliable")
