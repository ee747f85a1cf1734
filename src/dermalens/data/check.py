"""`dermalens data` as one call: read a dataset as training would, list what is wrong with it."""
from __future__ import annotations

from pathlib import Path


def check_dataset(data: str | Path, data_format: str | None = None, *, check_images: bool = False,
                  restrict_to_available: bool = False) -> tuple[dict, list]:
    """(`summarise_dataset` of the data, its issues); check_images: decode every image to find unreadable ones."""
    from ..config import load_config
    from .prepare import load_dataset
    from .validation import find_unreadable_images, summarise_dataset

    given = {"path": str(data)} | ({"format": data_format} if data_format else {})   # as given, not read as YAML
    overrides = ["data.restrict_to_available=true"] if restrict_to_available else []
    dataset = load_dataset(load_config(None, overrides, {"data": given}))
    issues = list(dataset.issues)
    if check_images:
        issues += find_unreadable_images(dataset)
        dataset.issues = issues
    return summarise_dataset(dataset), issues
