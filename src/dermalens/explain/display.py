"""How large an explanation picture may be: the display size, the caption's width, the aspect limit.

A heatmap carries no more detail than the model's input (224 px, say), so
drawing it at a 40-megapixel photo's full size only costs memory. Pictures
are therefore drawn at a display size capped at DISPLAY_MAX_SIDE (larger
images are shrunk first), and a narrow image is enlarged only as far as the
caption needs to stay legible, never past that cap. Images thinner than
MAX_ASPECT_RATIO : 1 are refused: a 1 x 1000 strip has nothing to explain,
and enlarging it for its caption is what made a 92-byte PNG cost a gigabyte.

No heavy imports here: the web app checks an upload with it before it
queues any work.
"""
from __future__ import annotations

import math

DISPLAY_MAX_SIDE = 1024    # longest side of a heatmap and of the photo in an overlay or report
MIN_CAPTION_WIDTH = 360    # narrower pictures get a caption band this wide (the text stays legible)
MAX_ASPECT_RATIO = 10.0    # longest side / shortest side of an image that is explained


class ImageShapeError(ValueError):
    """An image whose shape cannot be explained (too thin); the message names its size."""


def check_aspect_ratio(height: int, width: int) -> None:
    """ImageShapeError naming the size when the image is thinner than MAX_ASPECT_RATIO : 1."""
    height, width = int(height), int(width)
    if min(height, width) < 1:
        raise ImageShapeError(f"image has no pixels ({width} x {height})")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageShapeError(
            f"image is {width} x {height} pixels, an aspect ratio of {ratio:.0f}:1; explanations take images of "
            f"at most {MAX_ASPECT_RATIO:g}:1 (crop it to the lesion)")


def display_shape(height: int, width: int, max_side: int = DISPLAY_MAX_SIDE) -> tuple[int, int]:
    """(height, width) shrunk to fit max_side, aspect kept; never enlarged.

    The shorter side is rounded up, so the display is never thinner than the image: rounding it to the
    nearest pixel showed a 400 x 4000 upload (10:1, accepted) at 102 x 1024, past the 10:1 explanations
    take, and refused it only after the explanation was computed."""
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return height, width
    longer = max(height, width)

    def scaled(side: int) -> int:
        exact = side * scale
        return max(1, round(exact) if side == longer else math.ceil(exact - 1e-9))
    return scaled(height), scaled(width)


def enlargement(height: int, width: int, min_width: int = MIN_CAPTION_WIDTH,
                max_side: int = DISPLAY_MAX_SIDE) -> int:
    """Whole factor that brings a narrow picture towards min_width, without its longest side passing max_side."""
    wanted = math.ceil(min_width / width)
    allowed = max(1, max_side // max(height, width))
    return max(1, min(wanted, allowed))
