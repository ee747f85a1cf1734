"""A cross-validated run shipped as ONE distilled model instead of the ensemble of its fold models.

The logit mean of K fold models is the more accurate model, but it runs K
heads on every view: several times one model's time per image
(docs/performance.md). With `training.student` the fold models teach one
model of the same recipe instead (knowledge distillation, Hinton et al.
2015), and that model is shipped:

1. the teacher is the fold models' out-of-fold logits: each pool image's
   soft target comes from the fold model that never saw it;
2. one student per fold, trained as the shipped one is but on the pool
   without that fold, predicts that fold: the student's own out-of-fold
   logits. Its temperature, class biases and melanoma operating point are
   fitted on them, since a student's probabilities are shaped unlike the
   ensemble's and the ensemble's rule does not fit them;
3. the student itself: one model on every pool image (no validation split,
   as nothing is chosen on one), distilled with training.distillation_weight
   and training.distillation_temperature. It becomes checkpoints/best.ckpt,
   calibrated on 2.'s logits, and is evaluated once on the test split.

What it costs and what it was measured to give: docs/results/recipe.md ("A
student with a rule of its own"). One known bias: the students of step 2
learn from teacher logits of fold models that saw the fold they predict, so
their out-of-fold logits flatter them a little and the melanoma threshold
fitted on them flags at a few points under the asked specificity.

Folders: student/ (the shipped student's run) and student-without-fold-k/,
ordinary run folders, resumable one by one like the folds.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.prepare import EXCLUDED, PreparedData
from ..models.checkpoint import load_classifier, save_classifier
from ..run_folder import RunFolder
from .frozen_trunk import TrunkActivations
from .held_out_logits import out_of_fold_logits
from .run import member_config, train

log = logging.getLogger(__name__)


@dataclass
class StudentResult:
    checkpoint: Path             # the student trained on the whole pool
    out_of_fold: np.ndarray      # (pool images, classes): each from the student trained without its fold
    train_seconds: float         # the students' training, summed over their runs


def student_folder(run_dir: Path, without_fold: int | None = None) -> RunFolder:
    return RunFolder(Path(run_dir) / ("student" if without_fold is None else f"student-without-fold-{without_fold}"))


def train_student(config: dict, folder: RunFolder, prepared: PreparedData, teacher_logits: np.ndarray | None,
                  left_out: np.ndarray | None = None, progress: bool = True,
                  max_time: str | None = None) -> tuple[Path, float]:
    """One model of `config`'s recipe on every "train" row of `prepared` but the rows `left_out`, with no
    validation split, distilled from `teacher_logits` (one row per image of `prepared`; only the training rows
    need be finite) by config's training.distillation_weight (0: the labels only).

    Resumable: a finished student is not trained again. Returns its checkpoint and its training seconds."""
    status = folder.read_status()
    if status.get("state") != "finished":
        student = member_config(config, folder.path.name, max_time)
        split = np.where(np.asarray(prepared.split) == "train", "train", EXCLUDED)
        if left_out is not None:
            split[left_out] = EXCLUDED
        distilling = student["training"]["distillation_weight"] > 0
        log.info("%s: %s", folder.path.name, "resuming" if folder.checkpoint("last").is_file() else "training")
        train(student, folder.path, resume=folder.checkpoint("last").is_file(), progress=progress,
              prepared=dataclasses.replace(prepared, split=split, split_source=f"the pool of {folder.path.name}"),
              calibrate_after_training=False, teacher_logits=teacher_logits if distilling else None)
        status = folder.read_status()
    return folder.recorded_best_checkpoint(status), float(status.get("train_seconds", 0.0))


def distil_student(config: dict, run_dir: Path, prepared: PreparedData, assignment: np.ndarray,
                   teacher_logits: np.ndarray, activations: TrunkActivations | None,
                   share_of_budget: Callable[[int], str | None], progress: bool = True) -> StudentResult:
    """Steps 2 and 3 above for a cross-validated run whose fold models are trained.

    assignment: each image's fold (0..K-1), -1 outside the pool (the test split).
    teacher_logits: (images, classes), the fold models' out-of-fold logits on the pool rows.
    share_of_budget(trainings left): the max_time each of the remaining trainings gets (None: no limit).
    """
    folds = int(assignment.max()) + 1
    pool = np.flatnonzero(assignment >= 0)
    prepared = dataclasses.replace(prepared, split=np.where(assignment >= 0, "train", EXCLUDED))
    teacher = np.full_like(teacher_logits, np.nan, dtype=np.float32)
    teacher[pool] = teacher_logits[pool]
    out_of_fold = np.full((len(prepared.labels), len(prepared.classes)), np.nan, dtype=np.float32)
    seconds = 0.0
    for fold in range(folds):
        rows = np.flatnonzero(assignment == fold)
        checkpoint, spent = train_student(config, student_folder(run_dir, fold + 1), prepared, teacher,
                                          left_out=rows, progress=progress,
                                          max_time=share_of_budget(folds - fold + 1))
        out_of_fold[rows] = out_of_fold_logits(config, checkpoint, prepared, rows, activations, progress)
        seconds += spent
    checkpoint, spent = train_student(config, student_folder(run_dir), prepared, teacher, progress=progress,
                                      max_time=share_of_budget(1))
    log.info("student trained in %.1f min (its %d out-of-fold students: %.1f min)", spent / 60, folds, seconds / 60)
    return StudentResult(checkpoint, out_of_fold[pool], seconds + spent)


def ship_student(student_checkpoint: Path, out: Path, members: int, training: dict) -> Path:
    """The student as the run's model (`out`, e.g. checkpoints/best.ckpt), its metadata saying what taught it."""
    model, meta = load_classifier(student_checkpoint)
    meta["distilled_from"] = {"teacher": f"the out-of-fold logits of {members} fold models",
                              "weight": training["distillation_weight"],
                              "temperature": training["distillation_temperature"],
                              "student_checkpoint": str(Path(student_checkpoint).relative_to(out.parents[1]))}
    return save_classifier(model, meta, out)
