"""Real image files of many formats and odd kinds, made from the shared HAM10000 sample photos.

Used by test_image_formats.py (decoder, lister, readers) and test_image_inputs_cli.py
(the same files through `dermalens predict` and `evaluate`).
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112


def sample_photos(sample_dir: Path, count: int | None = None) -> list[Path]:
    photos = sorted(p for p in sample_dir.glob("ISIC_*.jpg") if "_segmentation" not in p.name)
    return photos[:count] if count else photos


def rgb_of(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def write_format(source: Path, out: Path, kind: str) -> Path:
    """`source` (a sample JPEG) written as `kind`; returns the file written (its name may differ in case)."""
    rgb = rgb_of(source)
    image = Image.fromarray(rgb)
    if kind == "bmp":
        image.save(out, "BMP")
    elif kind == "tiff16-rgb":        # 16 bits per channel, as scanners and microscopes write
        cv2.imwrite(str(out), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    elif kind == "tiff16-grey":
        cv2.imwrite(str(out), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257)
    elif kind == "png-alpha":          # opaque lesion, a transparent border (a cut-out)
        alpha = np.full(rgb.shape[:2], 255, np.uint8)
        alpha[:40], alpha[-40:] = 0, 0
        Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(out, "PNG")
    elif kind == "webp":
        image.save(out, "WEBP", lossless=True)
    elif kind == "jpeg-exif-rotated":  # stored sideways with an EXIF tag, as a phone held upright stores it
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6
        image.transpose(Image.Transpose.ROTATE_90).save(out, "JPEG", quality=95, exif=exif)
    elif kind == "jpeg-upper-case":
        image.save(out, "JPEG", quality=95)
    else:
        raise ValueError(kind)
    return out


FORMATS = {   # kind -> file name suffix
    "bmp": ".bmp", "tiff16-rgb": ".tif", "tiff16-grey": ".tiff", "png-alpha": ".png", "webp": ".webp",
    "jpeg-exif-rotated": ".jpg", "jpeg-upper-case": ".JPG",
}


def png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header says width x height (RGB): decoding it would need width*height*3 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
                     + chunk(b"IEND", b""))
    return path


def truncated_copy(source: Path, out: Path, keep: float = 0.6) -> Path:
    data = source.read_bytes()
    out.write_bytes(data[:int(len(data) * keep)])
    return out


def _s15(value: float) -> bytes:
    return struct.pack(">i", int(round(value * 65536)))


def cmyk_profile_cyan_prints_red() -> bytes:
    """A CMYK ICC profile (v2, lut8) in which cyan ink alone prints sRGB red.

    No system profile is needed, and a decoder that ignores the profile gives
    cyan: the difference cannot be missed.
    """
    def lab_of(c, m, y, k):
        if k:
            return 0, 0, 0
        if c and not (m or y):
            return 54, 80, 67          # sRGB red
        return 100 - 40 * (c + m + y) / 3, 0, 0

    identity = bytes(range(256))
    matrix = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    clut = bytearray()
    for corner in np.ndindex(2, 2, 2, 2):   # first input channel varies slowest, as lut8Type orders them
        lightness, a, b = lab_of(*corner)
        clut += bytes([round(lightness * 255 / 100), round(a + 128), round(b + 128)])
    a2b0 = b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + matrix + identity * 4 + bytes(clut) + identity * 3
    b2a0 = (b"mft1" + bytes(4) + bytes([3, 4, 2, 0]) + matrix + identity * 3
            + b"".join(bytes([0, 0, 0, 255 * (1 - lightness)]) for lightness, _, _ in np.ndindex(2, 2, 2))
            + identity * 4)
    text = b"dermalens test CMYK\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(8) + bytes(3) + bytes(67)
    white = b"XYZ " + bytes(4) + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    tags = [(b"desc", desc), (b"wtpt", white), (b"cprt", b"text" + bytes(4) + b"public domain\0"),
            (b"A2B0", a2b0), (b"B2A0", b2a0)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data + bytes(-len(data) % 4)
    header = (struct.pack(">I", offset + len(body)) + bytes(4) + struct.pack(">I", 0x02100000) + b"prtrCMYKLab "
              + bytes(12) + b"acsp" + bytes(24) + bytes(4) + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + bytes(48))
    return header + struct.pack(">I", len(tags)) + table + body
