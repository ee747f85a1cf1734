"""The tiny trained model of the browser-page and Hub tests (tests/conftest.py trains it once a session).

Two training batches at 64 px on generated images, with ImageNet Lite0
features (an offline weights package) so that its probabilities depend on
the photo; its calibration record turns on everything the predictors apply:
a temperature, flip TTA, per-class biases and a melanoma operating point.
"""
from __future__ import annotations

import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_RUN = ["data.format=synthetic", "data.synthetic_per_class=10", "training.max_epochs=1",
            "training.limit_train_batches=2", "model.image_size=64", "model.pretrained=auto",
            "evaluation.after_training=false", "training.progress_bar=false", "data.cache_dir=null",
            "training.precision=32-true"]  # bf16 is emulated, several times slower, on CPUs without it
CLASS_BIAS = {"akiec": 0.4, "bcc": -0.3, "bkl": 0.2, "df": 0.9, "mel": 0.6, "nv": -0.8, "vasc": 0.1}
DECISION = {"objective": "balanced_accuracy", "class_bias": CLASS_BIAS, "fitted_on": "val",
            "melanoma_operating_point": {"threshold": 0.14, "specificity": 0.8, "sensitivity": 0.7,
                                         "fitted_on": "val"}}
TEMPERATURE = 1.7


def train_tiny_run(run_dir: Path) -> Path:
    """The run folder (config.yaml, split.csv, checkpoints/best.ckpt with its calibration record)."""
    from dermalens.config import load_config
    from dermalens.models.calibration_record import write_calibration
    from dermalens.training.run import train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(load_config(REPO_ROOT / "configs" / "demo.yaml", TINY_RUN), run_dir, progress=False)
    write_calibration(run_dir / "checkpoints" / "best.ckpt", temperature=TEMPERATURE, tta=True, n_images=10,
                      decision=DECISION)
    return run_dir


def package_tiny_run(run_dir: Path, out: Path, sample_dir: Path) -> Path:
    """`dermalens package` of the tiny run: the folder a Hub repository holds."""
    from dermalens.cli import main

    assert main(["package", str(run_dir), "--out", str(out), "--parity-images", str(sample_dir / "ISIC_*.jpg"),
                 "--parity-count", "4"]) == 0
    return out
