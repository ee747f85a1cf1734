"""Maps to pictures: upsampling to the displayed image, colouring, the caption band, PNG encoding.

Everything here works at the display size of `display.py` (at most
DISPLAY_MAX_SIDE on the longest side), whatever the size of the upload.
"""
from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pytorch_grad_cam.utils.image import scale_cam_image, show_cam_on_image

from ..data.geometry import SQUASH, map_to_image
from .display import MIN_CAPTION_WIDTH, check_aspect_ratio, display_shape, enlargement

MIN_OVERLAY_WIDTH = MIN_CAPTION_WIDTH   # the caption band is at least this wide
IMAGE_WEIGHT = 0.5        # share of the photograph in the blended overlay
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def heatmap_at_size(raw_map: np.ndarray, height: int, width: int, geometry: str = SQUASH) -> np.ndarray:
    """Positive part of a signed map, scaled to [0, 1] and laid over a height x width image.

    The map covers the square the model saw; `geometry` (the model's policy)
    says where that square lies in the original image, so the heat lands on
    the pixels it came from. Outside a centre-square crop it is 0: the model
    never saw those pixels.
    """
    positive = np.maximum(np.asarray(raw_map, dtype=np.float32), 0)
    if positive.max() <= 0:
        return np.zeros((height, width), dtype=np.float32)
    scaled = scale_cam_image(positive[None])[0]    # min-max to [0, 1] at the map's own size
    return np.clip(map_to_image(scaled, height, width, geometry), 0.0, 1.0).astype(np.float32)


def display_image(image: np.ndarray) -> np.ndarray:
    """The image at its display size (`display.display_shape`): shrunk by area averaging, never enlarged."""
    height, width = display_shape(*image.shape[:2])
    if (height, width) == image.shape[:2]:
        return image
    return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_AREA)


def _wrap(text: str, max_width: int, scale: float, thickness: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and cv2.getTextSize(candidate, _FONT, scale, thickness)[0][0] > max_width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def caption_band(lines: list[str], width: int) -> np.ndarray:
    """A dark band with white text, wrapped to `width` (ASCII text: cv2's fonts have no accents)."""
    scale = float(np.clip(width / 900, 0.4, 0.9))
    thickness = 1 if scale < 0.7 else 2
    margin = max(4, int(round(10 * scale)))
    wrapped = [w for line in lines for w in _wrap(line, width - 2 * margin, scale, thickness)]
    line_height = cv2.getTextSize("Ag", _FONT, scale, thickness)[0][1] + cv2.getTextSize("Ag", _FONT, scale, thickness)[1]
    step = int(round(line_height * 1.35))
    band = np.full((2 * margin + step * len(wrapped), width, 3), 32, dtype=np.uint8)
    for i, text in enumerate(wrapped):
        baseline = margin + step * i + line_height
        cv2.putText(band, text, (margin, baseline), _FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return band


def render_overlay(image: np.ndarray, heatmap: np.ndarray, caption: list[str]) -> np.ndarray:
    """The heatmap (jet) blended over the image, with a caption band below it.

    `image` and `heatmap` are at the display size (`display_image`). A narrow
    image is enlarged by a whole factor (nearest neighbour, so no pixel is
    invented) towards the caption's minimum width, never past
    DISPLAY_MAX_SIDE; where it is still narrower, it sits centred above a
    caption band of MIN_OVERLAY_WIDTH. Images thinner than MAX_ASPECT_RATIO
    are refused (ValueError naming the size).
    """
    check_aspect_ratio(*image.shape[:2])
    if heatmap.shape != image.shape[:2]:
        raise ValueError(f"heatmap {heatmap.shape} and image {image.shape[:2]} differ in size")
    blended = show_cam_on_image(image.astype(np.float32) / 255.0, heatmap, use_rgb=True,
                                colormap=cv2.COLORMAP_JET, image_weight=IMAGE_WEIGHT)
    factor = enlargement(*blended.shape[:2])
    if factor > 1:
        blended = cv2.resize(blended, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
    width = max(blended.shape[1], MIN_OVERLAY_WIDTH)
    if blended.shape[1] < width:   # centred on a dark canvas as wide as the caption
        canvas = np.full((blended.shape[0], width, 3), 32, dtype=np.uint8)
        left = (width - blended.shape[1]) // 2
        canvas[:, left:left + blended.shape[1]] = blended
        blended = canvas
    return np.ascontiguousarray(np.vstack([blended, caption_band(caption, width)]))


def png_bytes(rgb: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """PNG of an RGB uint8 image; `text` goes into the file as tEXt chunks (method, disclaimer...)."""
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
