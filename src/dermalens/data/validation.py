"""Finding bad data, deciding what to do with it, and describing a dataset.

The readers in `readers/` already report rows they could not use (missing
files, unknown labels, duplicates). This module adds the decode check, applies
the user's policy ('error' stops with a list of the bad files, 'skip' drops
them with a warning) and writes the issues out so they can be fixed.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd
from PIL import Image, ImageFile
from tqdm.auto import tqdm

from dermalens.atomic_io import atomic_write_text
from dermalens.data.readers import DataIssue, LesionDataset, decode_image_file

BAD_DATA_POLICIES = ("error", "skip")
MAX_LISTED_ISSUES = 50
# A duplicate_id issue describes the extra rows the reader already left out;
# the first row with that id is fine and stays.
_KINDS_THAT_KEEP_THE_RECORD = ("duplicate_id",)
_DECODE_WORKERS = 2


class BadDataError(ValueError):
    """Bad items were found and the policy is 'error'; ``issues`` lists them."""

    def __init__(self, issues: Sequence[DataIssue]):
        self.issues = list(issues)
        super().__init__(describe_issues(self.issues))


def describe_issues(issues: Sequence[DataIssue], limit: int = MAX_LISTED_ISSUES) -> str:
    counts = Counter(issue.kind for issue in issues)
    lines = [f"{len(issues)} bad data item(s): " + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))]
    for issue in issues[:limit]:
        if issue.image_id:
            file_name = Path(issue.path).name if issue.path else "-"
            lines.append(f"  {issue.kind}: {issue.image_id} ({file_name}): {issue.detail}")
        else:   # a folder or file as a whole (an empty class folder, a misnamed one): its path says which
            lines.append(f"  {issue.kind}: {issue.path or '-'}: {issue.detail}")
    if len(issues) > limit:
        lines.append(f"  ... and {len(issues) - limit} more")
    lines.append("To drop them and go on (they are listed in data_issues.csv): --set data.on_bad_data=skip")
    return "\n".join(lines)


@contextlib.contextmanager
def _strict_truncation_check() -> Iterator[None]:
    # PIL's switch is process-wide; someone may have turned it on to read
    # damaged files, which would let truncated JPEGs through as grey blocks.
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _decode_problem(path: str) -> str | None:
    """Why the file cannot be fully decoded, or None when it can."""
    try:
        if os.path.getsize(path) == 0:
            return "file is empty (0 bytes)"
        # The decoder training and evaluation use: the same formats, size limit and messages.
        decode_image_file(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def find_unreadable_images(dataset: LesionDataset, progress: bool = True) -> list[DataIssue]:
    """Fully decode every file-backed image; return the ones that fail."""
    file_rows = dataset.records[dataset.records["path"].notna()]
    pairs = list(zip(file_rows["image_id"], file_rows["path"]))
    issues = []
    with _strict_truncation_check(), ThreadPoolExecutor(_DECODE_WORKERS) as pool:
        problems = pool.map(lambda pair: _decode_problem(pair[1]), pairs)
        for (image_id, path), problem in tqdm(zip(pairs, problems), total=len(pairs),
                                              desc=f"checking {dataset.name} images", disable=not progress):
            if problem is not None:
                issues.append(DataIssue("unreadable_image", image_id, path, problem))
    return issues


def apply_bad_data_policy(dataset: LesionDataset, issues: Sequence[DataIssue], policy: str) -> LesionDataset:
    """'error': raise BadDataError if there are issues. 'skip': drop the bad rows, warn once.

    Pass every issue that should count, typically
    ``dataset.issues + find_unreadable_images(dataset)``. The returned
    dataset's ``issues`` holds the dataset's own issues plus these.
    """
    if policy not in BAD_DATA_POLICIES:
        raise ValueError(f"unknown bad-data policy {policy!r}; use one of {', '.join(BAD_DATA_POLICIES)}")
    issues = list(issues)
    if not issues:
        return dataset
    if policy == "error":
        raise BadDataError(issues)

    bad_ids = {issue.image_id for issue in issues if issue.kind not in _KINDS_THAT_KEEP_THE_RECORD}
    keep = ~dataset.records["image_id"].isin(bad_ids).to_numpy()
    cleaned = dataset.subset(keep)
    already_recorded = {_issue_key(i) for i in dataset.issues}
    cleaned.issues = list(dataset.issues) + [i for i in issues if _issue_key(i) not in already_recorded]
    counts = Counter(issue.kind for issue in issues)
    warnings.warn(
        f"{dataset.name}: skipped {len(issues)} bad item(s) ("
        + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
        + f"); {int((~keep).sum())} record(s) dropped, {len(cleaned)} remain (data.on_bad_data=skip)",
        stacklevel=2,
    )
    return cleaned


def _issue_key(issue: DataIssue) -> tuple:
    return (issue.kind, issue.image_id, issue.path, issue.detail)


def write_issues_csv(issues: Sequence[DataIssue], path: Path) -> Path:
    """Write issues as CSV (kind,image_id,path,detail), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(
        [(i.kind, i.image_id, i.path or "", i.detail) for i in issues],
        columns=["kind", "image_id", "path", "detail"],
    )
    return atomic_write_text(path, table.to_csv(index=False))


def summarise_dataset(dataset: LesionDataset) -> dict:
    """Counts that describe a dataset: images, lesions, per class, per split, issues."""
    records = dataset.records
    labels = records["label"]
    summary = {
        "name": dataset.name,
        "n_images": int(len(records)),
        "n_lesions": int(records["lesion_id"].nunique()),
        "images_per_class": {c: int((labels == i).sum()) for i, c in enumerate(dataset.classes)},
        "lesions_per_class": {
            c: int(records.loc[labels == i, "lesion_id"].nunique()) for i, c in enumerate(dataset.classes)
        },
        "official_splits": {},
        "is_synthetic": bool(dataset.is_synthetic),
        "issues_by_kind": dict(sorted(Counter(issue.kind for issue in dataset.issues).items())),
    }
    splits = records["official_split"].dropna()
    if not splits.empty:
        summary["official_splits"] = {str(s): int(n) for s, n in splits.value_counts().sort_index().items()}
    return summary


def format_summary(summary: dict) -> str:
    """The summary as a readable text table."""
    title = f"Dataset: {summary['name']}"
    if summary.get("is_synthetic"):
        title += "  (SYNTHETIC - not real data)"
    lines = [title, f"images: {summary['n_images']}   lesions: {summary['n_lesions']}", ""]
    n_images = max(summary["n_images"], 1)
    width = max([8, *(len(code) + 1 for code in summary["images_per_class"])])   # a user's own class names
    lines.append(f"{'class':<{width}}{'images':>9}{'share':>9}{'lesions':>10}")
    for code, count in summary["images_per_class"].items():
        lines.append(f"{code:<{width}}{count:>9}{count / n_images:>9.1%}{summary['lesions_per_class'][code]:>10}")
    if summary.get("official_splits"):
        lines += ["", "official splits: " + ", ".join(f"{s} {n}" for s, n in summary["official_splits"].items())]
    issues = summary.get("issues_by_kind") or {}
    lines += ["", "issues: " + (", ".join(f"{n} {kind}" for kind, n in issues.items()) if issues else "none")]
    return "\n".join(lines)
