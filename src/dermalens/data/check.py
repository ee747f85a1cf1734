"""`dermalens data` as one call: read a dataset as training would, list what is wrong with it."""
from __future__ import annotations

from pathlib import Path


def check_dataset(data: str | Path | None, data_format: str | None = None, *, check_images: bool = False,
                  restrict_to_available: bool = False, overrides: list[str] | None = None) -> tuple[dict, list]:
    """(`summarise_dataset` of the data, its issues); check_images: decode every image to find unreadable ones.

    data None: $DERMALENS_DATA. overrides: data settings as training takes them ("data.classes=[benign,
    malignant]", "data.lesion_ids=...", "data.subset=Test"), so the data is read as a training run would."""
    from ..config import ConfigError, load_config
    from .prepare import load_dataset
    from .validation import find_unreadable_images, summarise_dataset

    outside = [item for item in overrides or () if not item.strip().startswith("data.")]
    if outside:
        raise ConfigError(f"dermalens data reads the data settings only (data.*); not {', '.join(outside)}")
    # As given, not read as YAML.
    given = ({"path": str(data)} if data is not None else {}) | ({"format": data_format} if data_format else {})
    overrides = [*(overrides or ()), *(["data.restrict_to_available=true"] if restrict_to_available else [])]
    dataset = load_dataset(load_config(None, overrides, {"data": given} if given else None))
    issues = list(dataset.issues)
    if check_images:
        issues += find_unreadable_images(dataset)
        dataset.issues = issues
    return summarise_dataset(dataset), issues
