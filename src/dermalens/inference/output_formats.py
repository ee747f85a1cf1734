"""Predictions written out: a table for people, long CSV, JSON, or an ISIC 2018 Task 3 submission CSV."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

from ..classes import CLASS_CODES, ISIC2018_SUBMISSION_COLUMNS, RESEARCH_DISCLAIMER

OUTPUT_FORMATS = ("table", "csv", "json", "isic2018")
DEFAULT_OUTPUT_FORMAT = "table"
DEFAULT_TOP_K = 3


def check_output_format(fmt: str, classes: Sequence[str], model: str | Path) -> None:
    """ValueError when `fmt` cannot hold the model's classes (the ISIC 2018 CSV has HAM10000's 7 columns)."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; use one of {', '.join(OUTPUT_FORMATS)}")
    if fmt == "isic2018" and sorted(classes) != sorted(CLASS_CODES):
        raise ValueError(f"-f isic2018 writes the 7 HAM10000 classes; {model} predicts "
                         f"{', '.join(classes)}: use -f csv or -f json")


def format_predictions(rows: list[dict], failures: list[str], fmt: str, runtime: str) -> str:
    """Predictions (`Prediction.to_dict` rows) as a table, long CSV, JSON, or an ISIC 2018 Task 3 submission CSV."""
    out = io.StringIO()
    if fmt == "json":
        json.dump({"predictions": rows, "errors": failures, "runtime": runtime,
                   "disclaimer": RESEARCH_DISCLAIMER}, out, indent=2)
        out.write("\n")
    elif fmt == "csv":
        # Long: one line per listed class; the model's decision (its fitted rule, which may pick another class
        # than rank 1) and its melanoma flag repeat on each line of the image.
        writer = csv.writer(out)
        writer.writerow(["image", "rank", "class", "name", "probability", "predicted_class", "melanoma_flag",
                         "caution"])
        for row in rows:
            flag = "" if row["melanoma_flag"] is None else str(row["melanoma_flag"]).lower()
            for rank, item in enumerate(row["top_k"], 1):
                writer.writerow([row["image"], rank, item["class"], item["name"], f"{item['probability']:.6f}",
                                 row["predicted_class"], flag, row.get("caution") or ""])
    elif fmt == "isic2018":
        # One row per image, the image id being the file stem, as isic-challenge-scoring reads it.
        writer = csv.writer(out)
        writer.writerow(["image", *ISIC2018_SUBMISSION_COLUMNS])
        for row in rows:
            writer.writerow([Path(row["image"]).stem, *(f"{row['probabilities'][c.lower()]:.6f}"
                                                         for c in ISIC2018_SUBMISSION_COLUMNS)])
    else:
        for row in rows:
            out.write(f"{row['image']}\n")
            for rank, item in enumerate(row["top_k"], 1):
                out.write(f"  {rank}. {item['class']:6s} {item['probability']:7.2%}  {item['name']}\n")
            out.write(f"  {decision_line(row)}\n")
            if row.get("caution"):
                out.write(f"  caution: {row['caution']}\n")
        for rule in dict.fromkeys(row["decision_rule"] for row in rows):   # once, not on every image's line
            out.write(f"decision rule: {rule}\n")
        out.write(f"{RESEARCH_DISCLAIMER}\n")
    return out.getvalue()


def decision_line(row: dict) -> str:
    """What the model reports for an image (`Prediction.to_dict`): its decided class, under the rule it was
    shipped with, and its melanoma flag; as the JSON answer, the web page and `dermalens explain` say it."""
    line = f"decision: {row['predicted_class']}"
    if row["predicted_class"] != row["top_class"]:
        line += f" (the decision rule's choice; the most probable class is {row['top_class']})"
    if row["melanoma_flag"] is not None:
        line += "; melanoma flag " + ("RAISED (P(mel) at or above the model's operating point)"
                                      if row["melanoma_flag"] else "not raised")
    return line
