"""Image decoding shared by the dataset readers, prediction and the upload endpoint.

Every image dermalens sees goes through `decode_image_file` (a file) or
`pil_to_rgb` (an opened Pillow image), so all of them reach the model as
upright RGB uint8 whatever mode or orientation they were stored in.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


class UnreadableImageError(OSError):
    """An image file exists but cannot be decoded; the message names the file."""


_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> RGB uint8 (grey, CMYK, palette, RGBA...).

    16-bit grey is scaled to 8 bits: Pillow's convert('RGB') clips it to
    white, which would silently feed the model a blank image.
    """
    if img.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(img, dtype=np.float64)
        grey = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if img.mode == "F":
        grey = np.asarray(img, dtype=np.float64)
        scale = 255.0 if np.nanmax(grey, initial=0.0) <= 1.0 else 1.0
        grey = np.clip(np.nan_to_num(grey * scale), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def decode_image_file(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to RGB uint8 HxWx3, honouring the EXIF orientation.

    Raises FileNotFoundError or UnreadableImageError, both naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            # Phone/camera images may be stored rotated with an EXIF tag;
            # the model must see them the way a person does.
            upright = ImageOps.exif_transpose(image)
            return pil_to_rgb(upright)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"cannot decode image {path}: {error}") from error

