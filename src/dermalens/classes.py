"""The one place that defines the lesion classes, their order and names.

The order is the HAM10000 / DermaMNIST label order (0 akiec ... 6 vasc), so
label integers from any reader mean the same class everywhere: in the model's
head, in metrics, in reports, in the web app.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LesionClass:
    index: int
    code: str
    name: str


LESION_CLASSES: tuple[LesionClass, ...] = (
    LesionClass(0, "akiec", "Actinic keratosis / intraepithelial carcinoma"),
    LesionClass(1, "bcc", "Basal cell carcinoma"),
    LesionClass(2, "bkl", "Benign keratosis-like lesion"),
    LesionClass(3, "df", "Dermatofibroma"),
    LesionClass(4, "mel", "Melanoma"),
    LesionClass(5, "nv", "Melanocytic nevus"),
    LesionClass(6, "vasc", "Vascular lesion"),
)

CLASS_CODES: tuple[str, ...] = tuple(c.code for c in LESION_CLASSES)
NUM_CLASSES = len(LESION_CLASSES)
_BY_CODE = {c.code: c for c in LESION_CLASSES}

# ISIC 2018 Task 3 ground-truth columns use upper-case codes (MEL, NV, ...).
ISIC2018_COLUMNS: tuple[str, ...] = tuple(c.upper() for c in CLASS_CODES)
# The order of the official files and of a Task 3 submission (what isic-challenge-scoring reads).
ISIC2018_SUBMISSION_COLUMNS: tuple[str, ...] = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")

RESEARCH_DISCLAIMER = (
    "Research tool, not a diagnosis: dermalens predictions must not be used "
    "for clinical decisions."
)


def class_index(code: str) -> int:
    """Index of a class code; raises a ValueError naming the unknown code."""
    try:
        return _BY_CODE[code.strip().lower()].index
    except KeyError:
        raise ValueError(
            f"unknown lesion class {code!r}; known classes: {', '.join(CLASS_CODES)}"
        ) from None


def class_name(code_or_index: str | int) -> str:
    if isinstance(code_or_index, int):
        return LESION_CLASSES[code_or_index].name
    return LESION_CLASSES[class_index(code_or_index)].name
