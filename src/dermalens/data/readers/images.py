"""Image decoding shared by the dataset readers, prediction and the upload endpoint.

Every image dermalens sees goes through `decode_image_file` (a file) or
`pil_to_rgb` (an opened Pillow image), so all of them reach the model as
upright RGB uint8 whatever format, mode or orientation they were stored in:

- transparency is composited on mid-grey (`ALPHA_BACKGROUND`), not dropped;
- CMYK is converted to sRGB through its embedded ICC profile when it has one;
- 16-bit and float grey are scaled to 8 bits, not clipped to white;
- the pixel count is checked from the header before any pixel is decoded
  (`check_image_size`), against an explicit limit (`max_image_pixels`).
"""
from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

# Transparent pixels carry no skin: they are shown to the model as mid-grey,
# which is close to the ImageNet mean that most backbones normalise by (so they
# reach the network near zero), and is neither the black vignette of a
# dermatoscope's round field of view (a shortcut models are known to learn)
# nor a white that reads as bright skin or a ruler.
ALPHA_BACKGROUND = (128, 128, 128)
# An explicit limit rather than Pillow's process-wide default (89.5 MP warns,
# 179 MP refuses): above it a file is refused from its header, undecoded. The
# largest dermoscopy photos (ISIC archive, 6000 x 6000) are 36 MP.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
MAX_PIXELS_VARIABLE = "DERMALENS_MAX_IMAGE_PIXELS"
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_SRGB = ImageCms.createProfile("sRGB")


class UnreadableImageError(OSError):
    """An image file exists but cannot be decoded; the message names the file."""


class NotAnImageError(UnreadableImageError):
    """The file's content is no image format Pillow reads (whatever its name says)."""


class ImageTooLargeError(UnreadableImageError):
    """The header gives more pixels than the limit; nothing was decoded."""


def max_image_pixels() -> int:
    """The pixel limit for image files: $DERMALENS_MAX_IMAGE_PIXELS, else `DEFAULT_MAX_IMAGE_PIXELS`."""
    value = os.environ.get(MAX_PIXELS_VARIABLE, "").strip().replace("_", "")
    if not value:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        limit = int(float(value))
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_VARIABLE}={value!r} is not a number of pixels") from None
    if limit < 1:
        raise ValueError(f"{MAX_PIXELS_VARIABLE}={value!r} must be a positive number of pixels")
    return limit


def check_image_size(size: tuple[int, int], max_pixels: int | None = None, what: str = "image") -> None:
    """Raise ImageTooLargeError when ``width x height`` (from a header) exceeds the limit.

    max_pixels: None = `max_image_pixels()`. `what` names the image in the message.
    """
    limit = max_image_pixels() if max_pixels is None else int(max_pixels)
    width, height = int(size[0]), int(size[1])
    if width * height > limit:
        raise ImageTooLargeError(
            f"{what} is {width} x {height} pixels ({width * height / 1e6:.4g} megapixels), more than the limit of "
            f"{limit / 1e6:.4g} megapixels; refused before decoding (a larger limit: {MAX_PIXELS_VARIABLE})")


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    profile = img.info.get("icc_profile")
    if profile:
        try:
            return ImageCms.profileToProfile(img, ImageCms.ImageCmsProfile(io.BytesIO(profile)), _SRGB,
                                             outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError) as error:
            warnings.warn(f"CMYK image with an unusable ICC profile ({error}): converted without it, "
                          "so its colours may be off", stacklevel=3)
    return img.convert("RGB")


def _composite_on_background(img: Image.Image) -> np.ndarray:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
    return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> RGB uint8 (grey, CMYK, palette, RGBA...).

    16-bit grey is scaled to 8 bits: Pillow's convert('RGB') clips it to
    white, which would silently feed the model a blank image. Transparency
    (an alpha channel, or a palette or colour key marked transparent) is
    composited on `ALPHA_BACKGROUND`: convert('RGB') would keep whatever
    colour hides under it, often black.
    """
    if img.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(img)
        grey = np.clip(np.rint(values.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
        key = img.info.get("transparency")
        if isinstance(key, int):   # a grey value marked transparent: fully transparent, so the background
            rgb[values == key] = ALPHA_BACKGROUND
        return np.ascontiguousarray(rgb)
    if img.mode == "F":
        grey = np.asarray(img, dtype=np.float64)
        scale = 255.0 if np.nanmax(grey, initial=0.0) <= 1.0 else 1.0
        grey = np.clip(np.nan_to_num(grey * scale), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if img.mode == "CMYK":
        return np.asarray(_cmyk_to_rgb(img), dtype=np.uint8)
    if img.has_transparency_data:
        return _composite_on_background(img)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _check_exists(path: Path) -> None:
    try:
        os.stat(path)
    except FileNotFoundError:
        kind = "a broken link" if path.is_symlink() else "not found"
        raise FileNotFoundError(f"image file {kind}: {path}") from None
    except OSError as error:   # a symlink loop (ELOOP), no permission...
        raise UnreadableImageError(f"cannot open image {path}: {error.strerror}") from None
    if path.is_dir():
        raise UnreadableImageError(f"{path} is a folder, not an image file")


def _pillow_refused(path: Path, error: Image.DecompressionBombError, max_pixels: int | None) -> str:
    # Pillow refuses beyond twice its own limit while opening, before our check can
    # see the header: say it in our words, with the pixel count Pillow's message gives.
    limit = max_image_pixels() if max_pixels is None else int(max_pixels)
    found = re.search(r"\((\d+) pixels\)", str(error))
    pixels = int(found.group(1)) if found else None
    size = f"{pixels / 1e6:.4g} megapixels" if pixels else "too many pixels"
    if pixels and pixels <= limit:   # a limit raised beyond Pillow's own, which still holds
        return (f"image {path} has {size}, more than Pillow's own limit of "
                f"{2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.4g} megapixels (PIL.Image.MAX_IMAGE_PIXELS x 2); "
                "refused before decoding")
    return f"image {path} has {size}, more than the limit of {limit / 1e6:.4g} megapixels; refused before decoding"


def decode_image_file(path: str | os.PathLike, min_side: int | None = None,
                      max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file to RGB uint8 HxWx3, honouring the EXIF orientation.

    Any format Pillow reads, recognised by content whatever the file's name.
    min_side: the caller needs at least this many pixels on the shorter side,
    so a JPEG that is at least twice as large may be decoded at 1/2, 1/4 or
    1/8 scale (libjpeg's DCT scaling: several times faster, and smoother than
    decoding everything to throw most of it away). None = full resolution,
    as training's image cache always decodes. max_pixels: the limit checked
    from the header before decoding; None = `max_image_pixels()`.

    Raises FileNotFoundError, or UnreadableImageError (NotAnImageError,
    ImageTooLargeError) naming the file.
    """
    path = Path(path)
    _check_exists(path)
    try:
        with warnings.catch_warnings():
            # Pillow's own size warning: our explicit limit below decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except UnidentifiedImageError:
        raise NotAnImageError(f"{path} is not an image: its content is no image format Pillow reads") from None
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(_pillow_refused(path, error, max_pixels)) from None
    except (OSError, ValueError, SyntaxError) as error:
        raise UnreadableImageError(f"cannot decode image {path}: {error}") from error
    with image:
        check_image_size(image.size, max_pixels, f"image {path}")
        try:
            if min_side is not None and min(image.size) >= 2 * int(min_side):
                image.draft(image.mode, (int(min_side), int(min_side)))
            # Phone/camera images may be stored rotated with an EXIF tag;
            # the model must see them the way a person does.
            upright = ImageOps.exif_transpose(image)
            return pil_to_rgb(upright)
        except (OSError, ValueError, SyntaxError, IndexError, TypeError) as error:
            raise UnreadableImageError(f"cannot decode image {path} ({image.format}): {error}") from error
