"""Uploaded bytes -> an upright RGB uint8 image, or an `UploadError` that says what was wrong.

Uploads are decoded from memory and never written to disk, so a client's
file name (`../../x.jpg`) is only ever a label. The pixel count is checked
from the header before any pixel is decoded, so a small file claiming
50,000 x 50,000 pixels (a decompression bomb) costs nothing.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import PureWindowsPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..data.geometry import ImageTooSmallError, check_large_enough
from ..data.readers.images import pil_to_rgb
from .capacity import DEFAULT_MAX_PIXELS

# Formats a dermoscopy image plausibly comes in; Pillow's other decoders
# (EPS, PSD, ...) are attack surface with no use here. JPEG includes MPO
# (multi-picture JPEGs from phones).
ALLOWED_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP")


class UploadError(ValueError):
    """A bad upload; `status` is the HTTP code to answer with (400, 413, 415)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class DecodedImage:
    rgb: np.ndarray          # (H, W, 3) uint8, upright
    filename: str            # display name only: the base name, never a path
    original_format: str
    original_mode: str

    @property
    def size(self) -> tuple[int, int]:
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])


def display_name(filename: str | None, limit: int = 120) -> str:
    """The base name of a client's file name, for messages and responses only."""
    name = PureWindowsPath(filename or "").name  # splits on both / and \
    name = "".join(ch for ch in name if ch.isprintable())
    return name[:limit] or "upload"


def decode_upload(data: bytes, filename: str | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode an uploaded image the way `read_rgb_image` reads a file: EXIF-upright, RGB."""
    name = display_name(filename)
    if not data:
        raise UploadError(f"uploaded file '{name}' is empty (0 bytes)")
    try:
        # Opening reads the header only. Pillow warns above its MAX_IMAGE_PIXELS and raises at twice that;
        # the server's own limit (max_pixels, below) is what the client is told, so the warning is not one
        # and the error is reported as that limit.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as error:
        if 2 * (Image.MAX_IMAGE_PIXELS or 0) >= max_pixels:   # over Pillow's limit is over the server's too
            raise UploadError(f"image '{name}' is too large: over the limit of {max_pixels / 1e6:.1f} megapixels",
                              status=413) from None
        raise UploadError(f"image '{name}' is too large to decode: {error}", status=413) from None
    except UnidentifiedImageError:
        raise UploadError(
            f"file '{name}' is not an image this server can read; "
            f"send one of: {', '.join(ALLOWED_FORMATS)}", status=415) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise UploadError(f"cannot read image '{name}': {error}") from None
    with img:
        width, height = img.size
        if width < 1 or height < 1:
            raise UploadError(f"image '{name}' has no pixels ({width} x {height})")
        try:
            check_large_enough(height, width, f"image '{name}'")
        except ImageTooSmallError as error:
            raise UploadError(str(error)) from None
        if width * height > max_pixels:
            raise UploadError(
                f"image '{name}' is {width} x {height} pixels ({width * height / 1e6:.1f} megapixels); "
                f"the limit is {max_pixels / 1e6:.1f} megapixels", status=413)
        try:
            img.load()
            upright = ImageOps.exif_transpose(img)
            rgb = pil_to_rgb(upright)
        except (OSError, SyntaxError, ValueError, IndexError, TypeError) as error:
            # Truncated and corrupt files land here ("image file is truncated").
            raise UploadError(f"cannot decode image '{name}' ({img.format}): {error}") from None
        return DecodedImage(rgb, name, img.format or "unknown", img.mode)
