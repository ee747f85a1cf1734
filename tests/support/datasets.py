"""Miniature dataset layouts made of links to the shared real images."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

METADATA_NAME = "HAM10000_metadata.csv"


def build_mini_ham10000(root: Path, sample_dir: Path, sample_metadata: pd.DataFrame) -> Path:
    """A HAM10000 layout in miniature: metadata of the 50 samples + symlinked images."""
    images = root / "HAM10000_images_part_1"
    images.mkdir(parents=True)
    for image_id in sample_metadata["image_id"]:
        (images / f"{image_id}.jpg").symlink_to(sample_dir / f"{image_id}.jpg")
    sample_metadata.to_csv(root / METADATA_NAME, index=False)
    return root
