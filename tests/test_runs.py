"""Runs that survive interruptions, moves and mistakes; external folders evaluated whole.

Tiny synthetic runs (32 px, a few seconds each) through the real command line.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dermalens.cli import main

pytestmark = pytest.mark.e2e
REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "data.format": "synthetic", "data.synthetic_per_class": 12, "model.image_size": 32, "model.pretrained": "none",
    "training.batch_size": 16, "sampler.samples_per_class": 16, "training.max_epochs": 3,
    "training.early_stopping_patience": 50, "evaluation.n_bootstrap": 50, "evaluation.tta": "false",
    "training.progress_bar": "false", "data.cache_dir": "null", "training.max_time": "null",
}


def settings(**extra) -> list[str]:
    return [item for key, value in {**TINY, **extra}.items() for item in ("--set", f"{key}={value}")]


def train_cli(run_dir: Path, **extra) -> int:
    return main(["train", "--config", "demo_dermamnist", "--run-dir", str(run_dir), *settings(**extra)])


def val_curve(run_dir: Path) -> pd.DataFrame:
    log = pd.read_csv(run_dir / "logs" / "metrics.csv")
    return log.dropna(subset=["val/loss"])[["epoch", "val/loss", "val/accuracy"]].reset_index(drop=True)


def test_same_seed_gives_the_same_numbers(tmp_path):
    assert train_cli(tmp_path / "a") == 0
    assert train_cli(tmp_path / "b") == 0
    pd.testing.assert_frame_equal(val_curve(tmp_path / "a"), val_curve(tmp_path / "b"))
    a, b = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("a", "b"))
    assert a["accuracy"] == b["accuracy"] and a["nll"] == b["nll"]


def test_sigterm_leaves_a_resumable_run_that_ends_where_an_uninterrupted_one_does(tmp_path, capfd):
    extra = {"training.max_epochs": 6}
    assert train_cli(tmp_path / "whole", **extra) == 0

    run_dir = tmp_path / "stopped"
    command = [sys.executable, "-m", "dermalens.cli", "train", "--config", "demo_dermamnist",
               "--run-dir", str(run_dir), *settings(**extra)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 900   # generous: a loaded 2-core machine can take minutes per epoch
    while time.monotonic() < deadline and process.poll() is None:
        if last.is_file() and len(val_curve_if_any(run_dir)) >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be stopped: " + process.communicate()[1][-2000:]
    assert last.is_file(), "no epoch finished in time; the test needs a checkpoint to resume from"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert f"dermalens train --resume {run_dir}" in stderr
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"
    assert not (run_dir / "metrics.json").exists()

    capfd.readouterr()
    assert main(["train", "--resume", str(run_dir)]) == 0
    # The run's logs are kept and merged: nothing frightening about deleting them is printed.
    assert "will be deleted" not in capfd.readouterr().err
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    resumed = json.loads((run_dir / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "nll"):
        assert resumed[key] == pytest.approx(whole[key], abs=1e-6), key
    curve_whole, curve_resumed = val_curve(tmp_path / "whole"), val_curve(run_dir)
    np.testing.assert_allclose(curve_resumed["val/loss"].to_numpy()[-3:], curve_whole["val/loss"].to_numpy()[-3:],
                               rtol=1e-5)


STOP_DURING_EVALUATION = """
import os, signal, sys
import dermalens.training.run as run
calibrate = run.calibrate_on_validation
def calibrate_then_stop(*args, **kwargs):
    result = calibrate(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)     # as a user's kill would, during the evaluation after training
    return result
run.calibrate_on_validation = calibrate_then_stop
from dermalens.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_stop_during_the_final_evaluation_is_recorded_and_resume_only_evaluates(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-c", STOP_DURING_EVALUATION, "train", "--config", "demo_dermamnist",
               "--run-dir", str(run_dir), *settings(**{"training.max_epochs": 2})]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 130, done.stderr[-2000:]
    assert f"dermalens train --resume {run_dir}" in done.stderr and "evaluation" in done.stderr
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "interrupted" and status["stage"] == "evaluation" and status["training_done"]
    assert not (run_dir / "metrics.json").exists()
    epochs_before = val_curve(run_dir)["epoch"].tolist()

    assert main(["train", "--resume", str(run_dir)]) == 0
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    assert (run_dir / "metrics.json").is_file() and (run_dir / "predictions.csv").is_file()
    assert val_curve(run_dir)["epoch"].tolist() == epochs_before   # it trained no more


def val_curve_if_any(run_dir: Path) -> pd.DataFrame:
    try:
        return val_curve(run_dir)
    except (FileNotFoundError, KeyError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return pd.DataFrame()


def checkpoint_names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_a_moved_run_resumes_and_evaluates_in_its_new_folder(tmp_path):
    assert train_cli(tmp_path / "A", **{"training.max_epochs": 1}) == 0
    moved = tmp_path / "B"
    shutil.move(tmp_path / "A", moved)
    assert main(["train", "--resume", str(moved), "--set", "training.max_epochs=2"]) == 0
    assert checkpoint_names(moved) == ["best.calibration.json", "best.ckpt", "last.ckpt"]   # no -v1 copies
    assert "max_epochs: 2" in (moved / "config.yaml").read_text()     # what the resume overrode
    assert main(["evaluate", "--run", str(moved), "--set", "evaluation.n_bootstrap=20"]) == 0
    assert (moved / "eval-synthetic-test" / "metrics.json").is_file()
    assert not (tmp_path / "A").exists()


def test_a_run_works_from_another_directory(tmp_path, shared_data, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    monkeypatch.chdir(REPO_ROOT)
    relative = os.path.relpath(shared_data / "dermamnist.npz", REPO_ROOT)
    assert main(["train", "--config", "demo_dermamnist", "--data", relative, "--run-dir", str(run_dir),
                 *settings(**{"data.format": "dermamnist", "training.max_epochs": 1,
                              "training.limit_train_batches": 2, "training.limit_val_batches": 2,
                              "evaluation.after_training": "false"})]) == 0
    assert Path(json.loads(json.dumps(__import__("yaml").safe_load((run_dir / "config.yaml").read_text())))
                ["data"]["path"]).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["evaluate", "--run", str(run_dir), "--split", "val", "--no-tta",
                 "--set", "evaluation.n_bootstrap=20"]) == 0
    assert "fitted on this validation split: these figures are optimistic" in capsys.readouterr().err
    assert (run_dir / "eval-dermamnist-val" / "metrics.json").is_file()
    assert "| caution | the temperature and decision rule were fitted on this validation split" in \
        (run_dir / "eval-dermamnist-val" / "report.md").read_text()
    assert not (run_dir / "metrics.json").exists()      # the one-time test report is not written by evaluate


@pytest.mark.parametrize("mistake, message", [
    (["--set", "training.max_epochs=two"], "max_epochs"),
    (["--data", "/no/such/folder", "--set", "data.format=folder"], "data path not found: /no/such/folder"),
    (["--set", "nonsense.key=1"], "unknown config key 'nonsense'"),
    (["--set", "seed.x=3"], "config key 'seed' is a single setting, not a section"),   # was a KeyError
    (["--set", "evaluation.n_bootstrap=-1"], "'evaluation.n_bootstrap' must be 0 or more, got -1"),  # after training
    (["--set", "training.max_time=abc"], "'training.max_time' must be DD:HH:MM:SS"),   # was Lightning's traceback
    # Refused by Lightning: it left a run folder that said "running" forever.
    (["--set", "training.accelerator=tpu"], "Lightning refused the training settings (training.accelerator=tpu"),
    # A cross-validated job wrote config.yaml, split.csv and a "failed" status first (after reading the data).
    (["--folds", "2", "--set", "training.accelerator=tpu"], "Lightning refused the training settings"),
    # --data is a folder name as written: "#" started a YAML comment, so "/x #2" trained on "/x".
    (["--data", "/no/such/folder #2", "--set", "data.format=folder"], "data path not found: /no/such/folder #2"),
])
def test_mistakes_are_named_and_leave_no_run_folder(tmp_path, capsys, mistake, message):
    runs = tmp_path / "runs"
    code = main(["train", "--config", "demo_dermamnist", *settings(**{"output.runs_dir": str(runs)}), *mistake])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not runs.exists() or not any(runs.iterdir())


def test_a_config_file_that_is_not_utf8_is_named(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_bytes("name: lésion\n".encode("latin-1"))
    assert main(["config", "show", str(config)]) == 2
    assert f"config file {config} is not UTF-8 text" in capsys.readouterr().err


def test_config_typo_lists_the_shipped_names(capsys):
    # Exit status 2, as for any error (it was 1, which docs/troubleshooting.md does not list).
    assert main(["train", "--config", "ham10000_cup"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'ham10000_cpu'?" in err and "demo_dermamnist" in err


def test_resume_of_a_missing_folder_says_so(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert "error: cannot resume: no run folder at" in capsys.readouterr().err


def file_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_an_external_folder_is_scored_whole_and_the_model_is_untouched(tmp_path, sample_dir, sample_metadata):
    assert train_cli(tmp_path / "run", **{"training.max_epochs": 1}) == 0
    folder = tmp_path / "external"
    for image_id, dx in zip(sample_metadata["image_id"], sample_metadata["dx"]):
        (folder / dx).mkdir(parents=True, exist_ok=True)
        (folder / dx / f"{image_id}.jpg").symlink_to(sample_dir / f"{image_id}.jpg")
    checkpoints = tmp_path / "run" / "checkpoints"
    before = file_digests(checkpoints)
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(checkpoints / "best.ckpt"), "--data", str(folder),
                 "--format", "folder", "--out", str(out), "--set", "evaluation.n_bootstrap=20"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_samples"] == 50 and metrics["split"] == "all"
    assert metrics["per_class"]["df"]["f1"] is None      # no df image: n/a, not 0
    assert file_digests(checkpoints) == before            # calibration and checkpoints unchanged
    assert "every image" in (out / "report.md").read_text()


def isic2018_test_set(root: Path, sample_dir: Path, sample_metadata: pd.DataFrame) -> Path:
    """The official ISIC 2018 Task 3 Test layout, in miniature: ground truth CSV + input folder."""
    images = root / "ISIC2018_Task3_Test_Input"
    images.mkdir(parents=True)
    columns = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    rows = []
    for image_id, dx in zip(sample_metadata["image_id"], sample_metadata["dx"]):
        (images / f"{image_id}.jpg").symlink_to(sample_dir / f"{image_id}.jpg")
        rows.append({"image": image_id, **{c: float(c.lower() == dx) for c in columns}})
    pd.DataFrame(rows).to_csv(root / "ISIC2018_Task3_Test_GroundTruth.csv", index=False)
    return root


@pytest.mark.parametrize("fmt", ["isic2018", "auto"])
def test_the_official_isic2018_test_set_is_scored_whole(tmp_path, sample_dir, sample_metadata, fmt):
    assert train_cli(tmp_path / "run", **{"training.max_epochs": 1}) == 0
    data = isic2018_test_set(tmp_path / "ISIC2018", sample_dir, sample_metadata)
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "best.ckpt"), "--data", str(data),
                 "--format", fmt, "--split", "test", "--out", str(out), "--set", "evaluation.n_bootstrap=20"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_samples"] == 50 and metrics["split"] == "all"      # every image, never re-split
    assert metrics["context"]["split_method"] == "every image of the official ISIC 2018 Test set (no split)"


def test_predict_writes_an_isic2018_submission(tmp_path, sample_dir):
    assert train_cli(tmp_path / "run", **{"training.max_epochs": 1}) == 0
    out = tmp_path / "submission.csv"
    assert main(["predict", "--model", str(tmp_path / "run" / "checkpoints" / "best.ckpt"), str(sample_dir),
                 "-f", "isic2018", "-o", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert sorted(table["image"]) == sorted(p.stem for p in sample_dir.glob("ISIC_*.jpg") if "_segmentation" not in p.stem)
    np.testing.assert_allclose(table.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-5)


def test_focal_loss_with_label_smoothing_is_refused(capsys):
    assert main(["config", "show", "demo", "--set", "loss.label_smoothing=0.1"]) == 2
    assert "loss.label_smoothing is not implemented for the focal loss" in capsys.readouterr().err


def test_dermalens_data_loads_neither_lightning_nor_matplotlib(shared_data):
    script = ("import sys\nfrom dermalens.cli import main\n"
              f"assert main(['data', '--data', {str(shared_data / 'ham10000_224')!r}]) == 0\n"
              "print(sorted(m for m in ('lightning', 'matplotlib', 'torch') if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_log_lines_are_said_once_without_tips_or_source_lines(tmp_path):
    """Item 11: Lightning's INFO lines once (not also through the root handler), no litlogger tip,
    warnings on one line without the source line that raised them."""
    command = [sys.executable, "-m", "dermalens.cli", "-v", "train", "--config", "demo_dermamnist",
               "--run-dir", str(tmp_path / "run"), *settings(**{"training.max_epochs": 1})]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    lightning = [line for line in lines if "lightning" in line.lower() and "INFO" in line]
    assert lightning, "with -v Lightning's INFO lines are shown"
    assert len(lightning) == len(set(lightning)), "a Lightning line was printed twice"
    assert "litlogger" not in done.stderr
    assert not [line for line in lines if line.lstrip().startswith("warnings.warn(")]
    warned = [line for line in lines if line.startswith("warning: ")]
    assert warned and all(line.endswith("Warning)") for line in warned)


def stopped_run(tmp_path: Path) -> Path:
    """A run folder as a stop after its first epoch leaves it: config.yaml, status and last.ckpt (a stand-in:
    the checks below refuse before anything reads it)."""
    from dermalens.config import dump_config, load_config

    run = tmp_path / "stopped"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(load_config(None, [f"{k}={v}" for k, v in TINY.items()])))
    (run / "checkpoints" / "last.ckpt").write_bytes(b"stand-in")
    (run / "status.json").write_text(json.dumps({"state": "interrupted"}))
    return run


@pytest.mark.parametrize("change, named", [
    (["--set", "model.backbone=resnet18"], "model.backbone: 'efficientnet_b3' -> 'resnet18'"),
    (["--set", "model.image_size=64"], "model.image_size: 32 -> 64"),
    (["--folds", "3"], "training.folds: 1 -> 3"),
    (["--set", "seed=5"], "seed: 0 -> 5")])
def test_a_resume_refuses_to_change_what_its_model_was_trained_as(tmp_path, capsys, change, named):
    """A changed backbone or class set was written to config.yaml and broke the run for good; a changed image
    size trained on at another size; another fold count reused fold models of another assignment."""
    run = stopped_run(tmp_path)
    before = (run / "config.yaml").read_text()
    assert main(["train", "--resume", str(run), *change]) == 2
    assert named in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == before


def test_a_resume_takes_data_and_refuses_options_it_would_ignore(tmp_path, capsys):
    run = stopped_run(tmp_path)
    assert main(["train", "--resume", str(run), "--config", "demo", "--run-dir", str(tmp_path / "x")]) == 2
    assert "drop --config and --run-dir" in capsys.readouterr().err
    # --data is a new place for the same data (it was silently ignored), taken as written: the resume goes on
    # to the checkpoint, which this stand-in fails, and the run now reads its data from there.
    assert main(["train", "--resume", str(run), "--data", str(tmp_path / "moved #2"), "--format", "synthetic"]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["path"] == str(tmp_path / "moved #2")


def test_cross_validation_never_trains_into_a_folder_holding_models(tmp_path, capsys):
    run = stopped_run(tmp_path)
    assert main(["train", "--config", "demo_dermamnist", "--run-dir", str(run), *settings(), "--folds", "2"]) == 2
    assert f"run folder {run.resolve()} already holds trained models" in capsys.readouterr().err
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == b"stand-in"


def test_a_write_cut_short_is_no_checkpoint_and_a_lone_best_says_why_it_cannot_resume(tmp_path):
    from dermalens.config import ConfigError
    from dermalens.run_folder import RunFolder

    run = stopped_run(tmp_path)
    (run / "checkpoints" / "last.ckpt").unlink()
    (run / "checkpoints" / ".last.ckpt.x1.ckpt-partial").write_bytes(b"cut")   # a kill mid-write
    assert not RunFolder(run).has_checkpoints()   # so a fresh start into it is not refused
    (run / "checkpoints" / "best.ckpt").write_bytes(b"model")
    with pytest.raises(ConfigError, match="only best.ckpt .did a write fail, on a full disk"):
        RunFolder(run).check_resumable()


def test_a_failed_cross_validated_run_says_so_in_its_status(tmp_path, monkeypatch):
    """A fold that failed left the run's status.json at "running" for good."""
    from dermalens.training import cross_validation

    def failing(*args, **kwargs):
        raise RuntimeError("a fold failed")

    monkeypatch.setattr(cross_validation, "train", failing)
    run = tmp_path / "cv"
    with pytest.raises(RuntimeError, match="a fold failed"):
        main(["-v", "train", "--config", "demo_dermamnist", "--run-dir", str(run), *settings(), "--folds", "2"])
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "a fold failed" in status["error"]


def test_a_second_training_into_a_busy_run_folder_is_refused_by_name(tmp_path, capsys):
    """Two trainings in one --run-dir both wrote config.yaml, metrics.csv and best.ckpt."""
    from dermalens.run_folder import RunFolder

    run = tmp_path / "busy"
    with RunFolder(run).training_lock():
        assert train_cli(run) == 2
        assert f"run folder {run} is in use by another training (pid {os.getpid()}" in capsys.readouterr().err
    assert not run.exists()   # the lock made the folder and took it away again; nothing else was written


def test_a_resume_that_trains_on_drops_the_calibration_of_the_earlier_best(tmp_path, monkeypatch):
    """Stopped after best.ckpt changed, a resumed run kept the earlier best's temperature and rule beside it,
    and predict and package used them for other weights."""
    from dermalens.models.calibration_record import calibration_path
    from dermalens.training import run as run_module
    from dermalens.training.errors import TrainingInterrupted

    run = tmp_path / "run"
    assert train_cli(run, **{"training.max_epochs": 1}) == 0
    record = calibration_path(run / "checkpoints" / "best.ckpt")
    assert record.is_file()

    def stopped_before_calibrating(config, run_dir, result, *args, **kwargs):
        raise TrainingInterrupted(run_dir, result.last_checkpoint, during="evaluation")

    monkeypatch.setattr(run_module, "finish_run", stopped_before_calibrating)
    assert main(["train", "--resume", str(run), "--set", "training.max_epochs=2"]) == 130
    assert not record.exists()


def test_a_stop_between_folds_is_recorded_in_the_cross_validated_runs_status(tmp_path, monkeypatch, capsys):
    """SIGTERM while the out-of-fold predictions ran killed the process and left status.json at "running"."""
    from dermalens.training import cross_validation

    def stopped(*args, **kwargs):
        # What the run's SIGTERM handler (run.sigterm_raises) raises; a real signal sent to the test process
        # could reach whatever handler another test left behind.
        raise SystemExit(128 + signal.SIGTERM)

    monkeypatch.setattr(cross_validation, "out_of_fold_logits", stopped)
    run = tmp_path / "cv"
    assert main(["train", "--config", "demo_dermamnist", "--run-dir", str(run),
                 *settings(**{"training.max_epochs": 1}), "--folds", "2"]) == 130
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted"
    assert status["train_seconds"] > 0   # carried into the resumed job's time and its share of max_time
    assert f"dermalens train --resume {run.resolve()}" in capsys.readouterr().err


def test_a_stopped_training_records_its_time_for_the_resume(tmp_path, monkeypatch):
    from dermalens.training import run as run_module
    from dermalens.training.errors import TrainingInterrupted

    def stopped(*args, **kwargs):
        time.sleep(0.3)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module.L.Trainer, "fit", stopped)
    with pytest.raises(TrainingInterrupted):
        run_module.train(tiny_config(), tmp_path / "run")
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "interrupted" and status["train_seconds"] >= 0.3


def tiny_config() -> dict:
    from dermalens.config_files import load_named_config

    return load_named_config("demo_dermamnist", [f"{key}={value}" for key, value in TINY.items()])


def test_the_logs_of_a_killed_resume_are_merged_without_repeating_steps(tmp_path):
    """A resume killed before it merged left metrics.before-resume.csv; the next resume appended the killed
    one's rows to all the earlier ones, so the steps the killed resume repeated appeared twice."""
    from dermalens.training.run import merge_metrics_logs, set_aside_metrics_log

    logs = tmp_path / "logs"
    logs.mkdir()
    # The first run logged steps 0-9 and was stopped; its last checkpoint was at step 4. The resume from there
    # logged steps 5-12 and was killed (kill -9) before it could merge.
    pd.DataFrame({"step": range(10), "train/loss": np.linspace(1, 0.5, 10)}).to_csv(
        logs / "metrics.before-resume.csv", index=False)
    pd.DataFrame({"step": range(5, 13), "train/loss": np.linspace(0.9, 0.4, 8)}).to_csv(
        logs / "metrics.csv", index=False)
    earlier = set_aside_metrics_log(tmp_path)
    assert earlier is not None and not (logs / "metrics.csv").exists()
    assert pd.read_csv(earlier)["step"].tolist() == list(range(13))
    # The next resume starts from the killed one's checkpoint at step 8 and logs 9-14.
    pd.DataFrame({"step": range(9, 15), "train/loss": np.linspace(0.6, 0.3, 6)}).to_csv(
        logs / "metrics.csv", index=False)
    merge_metrics_logs(earlier, logs / "metrics.csv", resumed_step=8)
    assert pd.read_csv(logs / "metrics.csv")["step"].tolist() == list(range(15))
    assert not earlier.exists()


def test_the_kept_logs_are_merged_when_a_killed_resume_logged_nothing(tmp_path):
    from dermalens.training.run import set_aside_metrics_log

    logs = tmp_path / "logs"
    logs.mkdir()
    pd.DataFrame({"step": range(4), "train/loss": np.ones(4)}).to_csv(logs / "metrics.before-resume.csv", index=False)
    earlier = set_aside_metrics_log(tmp_path)
    assert earlier is not None and pd.read_csv(earlier)["step"].tolist() == list(range(4))


def test_a_resumed_run_without_class_balancing_ends_where_an_uninterrupted_one_does(tmp_path):
    """With sampler.balanced false the shuffle was seeded once per loader: the loader a resume builds
    repeated epoch 0's order in epoch 1, and the resumed run ended elsewhere. And after a resume,
    train_seconds (status.json, the report) counted only the time since the resume."""
    natural = {"sampler.balanced": "false"}
    assert train_cli(tmp_path / "whole", **natural, **{"training.max_epochs": 2}) == 0
    resumed_run = tmp_path / "resumed"
    assert train_cli(resumed_run, **natural, **{"training.max_epochs": 1}) == 0
    status = json.loads((resumed_run / "status.json").read_text())
    assert status["state"] == "finished" and status["train_seconds"] > 0
    # As a stop records it; 1000 s stands out from what one more tiny epoch takes.
    (resumed_run / "status.json").write_text(json.dumps({**status, "state": "interrupted", "train_seconds": 1000.0}))
    assert main(["train", "--resume", str(resumed_run), "--set", "training.max_epochs=2"]) == 0
    whole, resumed = val_curve(tmp_path / "whole"), val_curve(resumed_run)
    assert resumed["epoch"].tolist() == whole["epoch"].tolist() == [0, 1]
    np.testing.assert_allclose(resumed["val/loss"].to_numpy(), whole["val/loss"].to_numpy(), rtol=1e-6)
    status = json.loads((resumed_run / "status.json").read_text())
    assert status["state"] == "finished" and 1000.0 < status["train_seconds"] < 1600.0


def test_training_that_diverges_stops_and_writes_no_checkpoint(tmp_path, capsys):
    """optimizer.lr=1e30 trained on to NaN weights, wrote them as best.ckpt and last.ckpt, and stopped only at the
    calibration ("logits must be finite"); a resume read the NaN last.ckpt again."""
    run = tmp_path / "run"
    assert train_cli(run, **{"optimizer.lr": "1e30"}) == 2
    assert "error: training diverged in epoch 1" in capsys.readouterr().err
    assert not list(run.rglob("*.ckpt"))
    assert json.loads((run / "status.json").read_text())["state"] == "failed"


def test_no_monitor_with_mode_min_trains(tmp_path):
    """monitor null with monitor_mode min gave best.ckpt's callback the state key of last.ckpt's, and Lightning
    refused the run with a traceback."""
    assert train_cli(tmp_path / "run", **{"training.monitor": "null", "training.monitor_mode": "min",
                                         "scheduler.name": "cosine", "training.max_epochs": 1}) == 0
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()


def test_step_checkpoints_keep_the_end_of_training_in_last_ckpt(tmp_path):
    """With checkpoint_every_n_steps, Lightning turned the per-epoch last.ckpt off: 14 steps in all, every 5,
    left last.ckpt at step 10, and a resume repeated the last four."""
    from dermalens.training.checkpoint_io import AtomicCheckpointIO

    assert train_cli(tmp_path / "run", **{"training.checkpoint_every_n_steps": 5, "training.max_epochs": 2}) == 0
    steps = AtomicCheckpointIO().load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"]
    assert steps == 2 * 7   # 7 class-balanced batches an epoch (7 classes x 16 samples / 16)


def test_a_backbone_typo_is_named_before_the_data_is_read(tmp_path, capsys, monkeypatch):
    from dermalens.data import prepare

    def not_yet(*args, **kwargs):
        raise AssertionError("the data was read before the backbone was checked")

    monkeypatch.setattr(prepare, "build_image_cache", not_yet)
    assert train_cli(tmp_path / "run", **{"model.backbone": "efficientnet_b99"}) == 2
    err = capsys.readouterr().err
    assert "model.backbone 'efficientnet_b99' is not a timm architecture; did you mean" in err
    assert not (tmp_path / "run").exists()


def test_the_demo_trains_what_its_config_says_folds_included(tmp_path, monkeypatch, capsys, shared_data):
    """dermalens demo trained one model whatever training.folds said (its config.yaml then recorded folds 2)."""
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--data", str(shared_data), "--config", "demo_dermamnist", *settings(**{"training.folds": 2, "training.max_epochs": 1,
                                                                     "name": "demo-folds"})]) == 0
    run = next((tmp_path / "runs").glob("demo-folds*"))
    assert (run / "cv.json").is_file() and (run / "fold-2" / "checkpoints" / "best.ckpt").is_file()
    assert "cross-validation, 2 folds" in capsys.readouterr().out


def test_a_budget_that_ends_training_before_its_epochs_is_said_in_the_terminal_status_and_report(tmp_path,
                                                                                                  capsys):
    """On a busy CPU the demo's 6-minute budget stopped training in its first epoch, and the run said
    "finished" with figures far below the documented ones and no word why."""
    run_dir = tmp_path / "cut"
    # A 1-second budget for 400 epochs: time, not the epochs, ends training.
    assert train_cli(run_dir, **{"training.max_time": "00:00:00:01", "training.max_epochs": 400}) == 0
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "finished"
    assert status["cut_short"].startswith("training.max_time (00:00:00:01) ended training in epoch ")
    assert "of 400" in status["cut_short"]
    assert f"WARNING: {status['cut_short']}" in capsys.readouterr().out
    assert f"> **Training was cut short:** {status['cut_short']}" in (run_dir / "report.md").read_text()
    # What training.precision became on this machine (auto differs between CPUs): said where the run is read.
    assert status["precision"] in ("32-true", "bf16-mixed")
    assert f"| trained_in_precision | {status['precision']} |" in (run_dir / "report.md").read_text()
    assert train_cli(tmp_path / "whole") == 0                       # 3 epochs well inside no budget
    assert "cut_short" not in json.loads((tmp_path / "whole" / "status.json").read_text())


def test_the_training_progress_bar_shows_no_logger_version(monkeypatch):
    """It showed "v_num=oard": the last characters of the fixed TensorBoard folder name."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    from dermalens.training.run import ProgressBar

    monkeypatch.setattr(TQDMProgressBar, "get_metrics", lambda self, trainer, module: {"loss": 0.5, "v_num": "oard"})
    assert ProgressBar().get_metrics(None, None) == {"loss": 0.5}


@pytest.mark.parametrize("max_epochs, global_step, said", [
    (3, 24, "epoch 3 of 3 (step 24 of 30)"),   # inside the last epoch: Lightning counts it as completed
    (1, 5, "epoch 1 of 1 (step 5 of 10)"),
    (3, 7, "epoch 1 of 3 (step 7 of 30)"),     # was called epoch 2
    (3, 20, "epoch 2 of 3 (step 20 of 30)"),   # at the end of epoch 2: not "epoch 3"
    (3, 30, None),                             # every step done: the epochs ended training
])
def test_a_budget_cut_is_told_from_the_steps_done(max_epochs, global_step, said):
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import Timer

    from dermalens.training.run import budget_cut_short

    timer = Timer(duration="00:00:00:01")
    timer.time_remaining = lambda *args, **kwargs: 0.0
    trainer = SimpleNamespace(callbacks=[timer], max_epochs=max_epochs, num_training_batches=10,
                              accumulate_grad_batches=1, global_step=global_step, current_epoch=max_epochs)
    message = budget_cut_short(trainer, "00:00:00:01")
    assert (message is None) if said is None else (said in message)
    timer.time_remaining = lambda *args, **kwargs: 5.0   # time left: the epochs (or early stopping) ended it
    assert budget_cut_short(trainer, "00:00:00:01") is None
