"""Training's own exceptions, free of heavy imports so the command line can catch them cheaply."""
from __future__ import annotations

from pathlib import Path


class TrainingInterrupted(RuntimeError):
    """SIGTERM / SIGINT stopped training; the run can be resumed from its last checkpoint."""

    def __init__(self, run_dir: Path, last: Path | None, during: str = "training"):
        self.run_dir, self.last = run_dir, last
        if during == "trunk cache":
            message = (f"stopped while caching the frozen trunk's activations (what was computed is kept). "
                       f"To continue: dermalens train --resume {run_dir}")
        elif during == "cross-validation":
            message = (f"stopped between the fold models' trainings (the finished folds are kept). To continue: "
                       f"dermalens train --resume {run_dir}")
        elif during == "evaluation":
            message = (f"stopped during the evaluation after training (training had finished). To continue: "
                       f"dermalens train --resume {run_dir} (it calibrates and evaluates, and trains no more)")
        elif last:
            message = f"training interrupted; last checkpoint: {last}. Continue with: dermalens train --resume {run_dir}"
        else:
            message = (f"training interrupted in its first epoch, before any checkpoint; nothing to resume "
                       f"(start it again; the folder {run_dir} can be deleted)")
        super().__init__(message)


class TrainingDiverged(ValueError):
    """The weights hold NaN or infinity: nothing is saved from here on, the last good checkpoint is kept."""
