"""Generated lesion-like images that are NOT real, for tests and smoke runs (never auto-detected)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dermalens.classes import CLASS_CODES, NUM_CLASSES

from .base import DatasetReader, LesionDataset, make_record, records_frame

# Per class: blob colour (RGB), outline irregularity, texture. Chosen to echo
# the real dermoscopic cues loosely, and above all to be learnable by a small
# CNN, so that training smoke tests can check the loss really falls.
_SYNTHETIC_STYLES = {
    "akiec": {"colour": (205, 105, 95), "irregularity": 0.25, "texture": "scaly"},
    "bcc": {"colour": (225, 175, 175), "irregularity": 0.05, "texture": "vessels"},
    "bkl": {"colour": (165, 125, 75), "irregularity": 0.12, "texture": "dots"},
    "df": {"colour": (140, 90, 70), "irregularity": 0.05, "texture": "ring"},
    "mel": {"colour": (60, 35, 40), "irregularity": 0.38, "texture": "blotches"},
    "nv": {"colour": (125, 80, 50), "irregularity": 0.0, "texture": "smooth"},
    "vasc": {"colour": (175, 25, 60), "irregularity": 0.0, "texture": "lobules"},
}
_SYNTHETIC_IMAGES_PER_LESION = 3


def _synthetic_lesion_params(rng: np.random.Generator) -> dict:
    return {
        "centre": rng.uniform(-0.15, 0.15, size=2),
        "radius": rng.uniform(0.35, 0.55),
        "aspect": rng.uniform(0.75, 1.0),
        "angle": rng.uniform(0, np.pi),
        "phases": rng.uniform(0, 2 * np.pi, size=3),
        # Lighter or darker skin, with only a slight tint, never green or grey.
        "skin": np.array([225.0, 180.0, 150.0]) * rng.uniform(0.8, 1.05) + rng.uniform(-8, 8, size=3),
        "spots": rng.uniform(-0.6, 0.6, size=(8, 2)),
    }


def _draw_synthetic_image(label: int, lesion: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    style = _SYNTHETIC_STYLES[CLASS_CODES[label]]
    axis = np.linspace(-1.0, 1.0, size)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    # Each image of a lesion is a slightly shifted/rotated view of the same blob.
    cy, cx = lesion["centre"] + rng.normal(0, 0.04, size=2)
    angle = lesion["angle"] + rng.normal(0, 0.2)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / lesion["aspect"]
    r, theta = np.hypot(u, v), np.arctan2(v, u)
    irregularity = style["irregularity"]
    p = lesion["phases"]
    boundary = lesion["radius"] * (1 + irregularity * (0.6 * np.sin(3 * theta + p[0])
                                                       + 0.3 * np.sin(5 * theta + p[1])
                                                       + 0.2 * np.sin(7 * theta + p[2])))
    if style["texture"] == "lobules":
        # A cluster of small round lobes instead of one blob.
        offsets = lesion["spots"][:4] * lesion["radius"] * 0.8
        lobe_r = np.min([np.hypot(u - oy, v - ox) for oy, ox in offsets], axis=0)
        mask = np.clip((lesion["radius"] * 0.45 - lobe_r) / 0.06, 0, 1)
    else:
        mask = np.clip((boundary - r) / 0.08, 0, 1)

    colour = np.array(style["colour"], dtype=float)
    lesion_rgb = np.broadcast_to(colour, (size, size, 3)).copy()
    texture = style["texture"]
    if texture == "scaly":
        lesion_rgb += rng.normal(0, 35, size=(size, size, 1))
    elif texture == "vessels":
        stripes = np.abs(np.sin(14 * u + 3 * np.sin(6 * v))) < 0.18
        lesion_rgb[stripes] = (190, 30, 40)
    elif texture == "dots":
        for sy, sx in lesion["spots"] * lesion["radius"]:
            lesion_rgb[np.hypot(u - sx, v - sy) < 0.06] = (90, 60, 35)
    elif texture == "ring":
        # Dermatofibroma-like: pale centre, darker rim.
        lesion_rgb[r < lesion["radius"] * 0.5] = (215, 185, 165)
    elif texture == "blotches":
        blue = np.sin(4 * u + p[0]) * np.sin(4 * v + p[1]) > 0.25
        lesion_rgb[blue] = (70, 80, 120)

    skin = lesion["skin"] * (1 - 0.12 * (xx**2 + yy**2))[..., None]  # soft vignette
    image = skin * (1 - mask[..., None]) + lesion_rgb * mask[..., None]
    image += rng.normal(0, 6, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_synthetic_dataset(n_per_class: int = 60, size: int = 64, seed: int = 0) -> LesionDataset:
    """A small, NOT real, dataset for tests and smoke runs (``is_synthetic=True``).

    Skin-toned images with a blob whose colour, outline and texture depend on
    the class, plus noise. About three images share each lesion id so that
    lesion-grouped splitting is exercised.
    """
    if n_per_class < 1 or size < 8:
        raise ValueError(f"need n_per_class >= 1 and size >= 8, got {n_per_class} and {size}")
    rng = np.random.default_rng(seed)
    images = np.empty((n_per_class * NUM_CLASSES, size, size, 3), dtype=np.uint8)
    rows = []
    for label, code in enumerate(CLASS_CODES):
        lesion = None
        for k in range(n_per_class):
            if k % _SYNTHETIC_IMAGES_PER_LESION == 0:
                lesion = _synthetic_lesion_params(rng)
            index = label * n_per_class + k
            images[index] = _draw_synthetic_image(label, lesion, size, rng)
            lesion_id = f"synthetic_{code}_lesion_{k // _SYNTHETIC_IMAGES_PER_LESION:04d}"
            rows.append(make_record(f"synthetic_{code}_{k:04d}", lesion_id, label, array_index=index))
    return LesionDataset(name="synthetic", root=Path("<synthetic>"), records=records_frame(rows),
                         images=images, is_synthetic=True)


READER = DatasetReader(read=make_synthetic_dataset, options=("n_per_class", "size", "seed"), takes_path=False)
