"""A run folder's layout, in one place: every reader and writer of runs asks here.

    config.yaml          the merged settings the run was made with (absolute data path)
    split.csv            image, lesion, label, split (and fold, source): the one record of the split
    data_issues.csv      bad data items found and skipped (when any)
    status.json          running | evaluating | interrupted | failed | finished, with details
    checkpoints/         best.ckpt, last.ckpt, and best.calibration.json (temperature, decision rule)
    logs/                metrics.csv (per epoch) and tensorboard/
    metrics.json, report.md, predictions.csv, figures/   the test evaluation, once
    cv.json, out_of_fold_logits.npy, fold-1/ ...   a cross-validated run: each fold a run folder itself
    eval-<data>-<split>/ every later `dermalens evaluate`, each in a folder of its own

A run folder is self-contained and relocatable: nothing in it names another
place except config.yaml's data path. Kept free of heavy imports (the
command line, packaging and evaluation read runs without loading training).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .atomic_io import atomic_write_json
from .config import ConfigError, load_config

CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.csv"
ISSUES_FILE = "data_issues.csv"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
CV_FILE = "cv.json"
LOCK_FILE = ".training.lock"
OUT_OF_FOLD_LOGITS = "out_of_fold_logits.npy"
TEACHER_LOGITS = "teacher_logits.npy"     # a distilled run's targets, kept for its resume
CHECKPOINTS = "checkpoints"
LOGS = "logs"
FIGURES = "figures"
CHECKPOINT_NAMES = ("best", "last")


@dataclass(frozen=True)
class RunFolder:
    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    # ------------------------------------------------------------------ where things are
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def split_file(self) -> Path:
        return self.path / SPLIT_FILE

    @property
    def issues_file(self) -> Path:
        return self.path / ISSUES_FILE

    @property
    def status_file(self) -> Path:
        return self.path / STATUS_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def cv_file(self) -> Path:
        return self.path / CV_FILE

    @property
    def teacher_logits_file(self) -> Path:
        return self.path / TEACHER_LOGITS

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def logs(self) -> Path:
        return self.path / LOGS

    @property
    def metrics_log(self) -> Path:
        return self.logs / "metrics.csv"

    def checkpoint(self, name: str | Path | None = "best") -> Path:
        """best | last -> that checkpoint of this run; anything else is a path of its own."""
        name = name or "best"
        return self.checkpoints / f"{name}.ckpt" if str(name) in CHECKPOINT_NAMES else Path(name)

    def fold(self, number: int) -> "RunFolder":
        """Fold `number` (1-based) of a cross-validated run: a run folder of its own."""
        return RunFolder(self.path / f"fold-{number}")

    def evaluation(self, data_name: str, split: str) -> Path:
        return self.path / f"eval-{data_name}-{split}"

    # ------------------------------------------------------------------ what they say
    def is_run(self) -> bool:
        return self.config_file.is_file()

    def has_checkpoints(self) -> bool:
        """Whether a finished checkpoint file is there (a temp file a kill left mid-write is none: counted, it
        made a fresh start say "use --resume" while resume said "start it again")."""
        return self.checkpoints.is_dir() and any(p.suffix == ".ckpt" for p in self.checkpoints.iterdir())

    def read_config(self, overrides: list[str] | None = None, settings: dict | None = None) -> dict:
        """The run's saved config.yaml with `overrides` (and `settings`, taken as written, as `load_config`
        takes them); ConfigError when this is no run folder."""
        if not self.is_run():
            raise ConfigError(f"no run folder at {self.path} (no {CONFIG_FILE})" if not self.path.is_dir()
                              else f"{self.path} is not a run folder (no {CONFIG_FILE})")
        return load_config(self.config_file, overrides, settings)

    def read_status(self) -> dict:
        try:
            return json.loads(self.status_file.read_text()) if self.status_file.is_file() else {}
        except (OSError, ValueError):
            return {}

    def recorded_best_checkpoint(self, status: dict | None = None) -> Path:
        """The best checkpoint its status names, in this folder as it is now: status.json records an absolute
        path, which goes stale once the run folder is copied or moved."""
        status = self.read_status() if status is None else status
        return self.checkpoints / Path(status["best_checkpoint"]).name

    def write_status(self, state: str, **details) -> None:
        atomic_write_json(self.status_file, {
            "state": state, "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "logs": str(self.logs), **details})

    @contextlib.contextmanager
    def training_lock(self):
        """Held while a training writes into this folder: a second training (or a resume while the first
        still runs) is refused by name, where both used to write into one config, log and best.ckpt.

        One lock per job: the ranks of a multi-process (DDP) job share the folder, so only its first process
        takes it."""
        if os.environ.get("RANK", "0") != "0" or os.environ.get("LOCAL_RANK", "0") != "0":
            yield
            return
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.path / LOCK_FILE
        with open(lock, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise ConfigError(f"run folder {self.path} is in use by another training ({holder}); wait for "
                                  f"it to end, or choose another --run-dir") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
                         f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}\n")
            handle.flush()
            try:
                yield
            finally:
                # Gone with the job: the folder keeps no trace of it, and a mistake refused before training
                # leaves no folder it made.
                lock.unlink(missing_ok=True)
                fcntl.flock(handle, fcntl.LOCK_UN)
                if created and not any(self.path.iterdir()):
                    self.path.rmdir()

    def check_resumable(self) -> Path:
        """The run folder (resolved) when it can be resumed; ConfigError saying why not otherwise."""
        if not self.path.is_dir():
            raise ConfigError(f"cannot resume: no run folder at {self.path}")
        if not self.is_run():
            raise ConfigError(f"cannot resume: {self.path} is not a run folder (no {CONFIG_FILE})")
        if not self.checkpoint("last").is_file() and not self.read_status().get("training_done"):
            if self.has_checkpoints():   # best.ckpt written, last.ckpt not: its write failed (a full disk?)
                raise ConfigError(f"cannot resume: {self.path} has no {CHECKPOINTS}/last.ckpt to go on from, only "
                                  f"{', '.join(sorted(p.name for p in self.checkpoints.glob('*.ckpt')))} (did a write "
                                  f"fail, on a full disk?); start again with another --run-dir")
            raise ConfigError(f"cannot resume: {self.path} has no {CHECKPOINTS}/last.ckpt (it stopped before its "
                              f"first epoch ended); start it again")
        return self.path.resolve()
