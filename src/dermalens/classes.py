"""The one place that defines the lesion classes, their order and names.

HAM10000's seven classes are the default class set, in the HAM10000 /
DermaMNIST label order (0 akiec ... 6 vasc). A dataset may bring its own
class set (a folder with five class folders, or `data.classes`); that set is
saved with the model, and a label integer is always an index into the class
set of the data or model it belongs to, never into a global list.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Iterable, Sequence


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


def class_index(code: str, classes: Sequence[str] = CLASS_CODES) -> int:
    """Index of a class code in `classes`; raises a ValueError naming the unknown code and the known ones."""
    normalised = str(code).strip().lower()
    for index, known in enumerate(classes):
        if known == normalised:
            return index
    hint = suggest_class(normalised, classes)
    raise ValueError(f"unknown lesion class {code!r}" + (f" (did you mean {hint!r}?)" if hint else "")
                     + f"; known classes: {', '.join(classes)}")


def class_name(code_or_index: str | int) -> str:
    """The long name of a HAM10000 class; a class of one's own is called by its code."""
    if isinstance(code_or_index, int):
        return LESION_CLASSES[code_or_index].name
    known = _BY_CODE.get(str(code_or_index).strip().lower())
    return known.name if known else str(code_or_index)


# Codes go into file names, JSON keys, CSV headers and URLs: keep them plain.
_CODE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def validate_class_set(classes: Iterable[str], where: str = "class list",
                       num_outputs: int | None = None) -> tuple[str, ...]:
    """A class set as lower-case codes; ValueError naming the problem (too few, repeated, odd characters).

    num_outputs: the width of the model output the classes label (a saved model's head), which must match.
    """
    codes = tuple(str(code).strip().lower() for code in classes)
    if num_outputs is not None and len(codes) != num_outputs:
        raise ValueError(f"{where} has {len(codes)} classes ({', '.join(codes)}) for a model with "
                         f"{num_outputs} outputs")
    if len(codes) < 2:
        raise ValueError(f"{where} needs at least 2 classes, got {list(codes)}")
    repeated = sorted({code for code in codes if codes.count(code) > 1})
    if repeated:
        raise ValueError(f"{where} names {', '.join(repeated)} more than once")
    odd = [code for code in codes if not _CODE_PATTERN.match(code)]
    if odd:
        raise ValueError(f"{where}: class codes are letters, digits, '_', '.' or '-' (starting with a letter or "
                         f"digit); not {', '.join(map(repr, odd))}")
    return codes


def ham10000_order(codes: Iterable[str]) -> tuple[str, ...]:
    """HAM10000 codes among `codes`, in HAM10000 label order (a folder with 5 of the 7 classes keeps their order)."""
    present = {str(code).strip().lower() for code in codes}
    return tuple(code for code in CLASS_CODES if code in present)


# What people call the HAM10000 classes when they name folders by hand.
_SYNONYMS = {
    "akiec": ("actinic keratosis", "actinic keratoses", "ak", "bowen", "bowens disease", "intraepithelial carcinoma",
              "solar keratosis"),
    "bcc": ("basal cell carcinoma", "basalioma"),
    "bkl": ("benign keratosis", "seborrheic keratosis", "seborrhoeic keratosis", "solar lentigo", "lentigo",
            "lichen planus like keratosis", "bkl like"),
    "df": ("dermatofibroma", "dermatofibromas"),
    "mel": ("melanoma", "melanomas", "malignant melanoma"),
    "nv": ("nevus", "naevus", "nevi", "naevi", "melanocytic nevus", "melanocytic nevi", "mole", "moles"),
    "vasc": ("vascular", "vascular lesion", "vascular lesions", "angioma", "hemangioma", "haemangioma"),
}


def suggest_class(name: str, classes: Sequence[str] = CLASS_CODES) -> str | None:
    """The class code a mistyped or spelled-out class name most likely means, or None."""
    words = " ".join(re.sub(r"[^a-z0-9]+", " ", str(name).lower()).split())
    squeezed = words.replace(" ", "")
    for code, spellings in _SYNONYMS.items():
        if code not in classes:
            continue
        for spelling in spellings:
            spelling = spelling.replace(" ", "")
            # "melanoma", "Melanoma_images", "nevi2": a spelled-out name, possibly with something after it
            if squeezed == spelling or (len(spelling) >= 5 and squeezed.startswith(spelling)):
                return code
    close = difflib.get_close_matches(words.replace(" ", ""), list(classes), n=1, cutoff=0.6)
    return close[0] if close else None
