"""Result files named the way MedMNIST's own `Evaluator` names them, so DermaMNIST
numbers drop into the tables people compare against.

MedMNIST (medmnist/evaluator.py) saves the score matrix of one split as
`{flag}{size_flag}_{split}_[AUC]{auc:.3f}_[ACC]{acc:.3f}@{run}.csv`: one row
per image in the .npz order, an index column, no header. Its AUC for a
multi-class task is the mean one-vs-rest AUC; ACC the top-1 accuracy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic_io import atomic_write_text

FLAG = "dermamnist"


def medmnist_result_name(split: str, image_size: int, auc: float, accuracy: float, run: str) -> str:
    size_flag = "" if image_size == 28 else f"_{image_size}"
    return f"{FLAG}{size_flag}_{split}_[AUC]{auc:.3f}_[ACC]{accuracy:.3f}@{run}.csv"


def write_medmnist_result(out_dir: Path, split: str, image_size: int, probs: np.ndarray, labels: np.ndarray,
                          auc: float, run: str) -> Path:
    """The scores of one split, named with their AUC and the top-1 accuracy of these very scores (MedMNIST's
    evaluator takes their argmax; a decision rule's accuracy would name the file with another number)."""
    accuracy = float(np.mean(np.asarray(probs).argmax(axis=1) == np.asarray(labels)))
    path = Path(out_dir) / medmnist_result_name(split, image_size, auc, accuracy, run)
    atomic_write_text(path, pd.DataFrame(np.asarray(probs, dtype=np.float64)).to_csv(header=False))
    return path
