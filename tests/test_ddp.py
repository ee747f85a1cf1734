"""Two real DDP processes on CPU (gloo, torchrun): sharding, exact synced validation, one set of files.

The training script below runs `dermalens.training.run.train` unchanged in
each process; it only records which dataset rows each rank's loaders
handed out, and what Lightning logged as validation metrics.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from dermalens.classes import NUM_CLASSES
from dermalens.config import load_config
from dermalens.data.prepare import prepare_data
from dermalens.data.sampler import ClassBalancedSampler
from dermalens.inference.predictor import predict_logits
from dermalens.models.checkpoint import load_classifier
from dermalens.training.module import validation_metrics

pytestmark = pytest.mark.ddp
REPO_ROOT = Path(__file__).resolve().parents[1]

OVERRIDES = [
    "data.format=synthetic", "data.synthetic_per_class=12", "data.val_fraction=0.2", "data.cache_dir=null",
    "model.image_size=32", "model.pretrained=none", "model.backbone=tf_efficientnet_lite0",
    # 4 per class from >= 6 training images each: drawn without replacement,
    # so the epoch stream has no repeated row and rank shards must be disjoint.
    "sampler.samples_per_class=4", "training.batch_size=4", "training.eval_batch_size=3",
    "training.max_epochs=1", "training.num_workers=0", "training.progress_bar=false",
    "training.accelerator=cpu", "training.devices=2", "training.strategy=ddp", "training.log_every_n_steps=1",
    "evaluation.tta=false", "evaluation.n_bootstrap=20", "evaluation.temperature_scaling=false",
]

SCRIPT = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    from dermalens.config import load_config
    from dermalens.data import datamodule as dm
    from dermalens.training import run
    from dermalens.training.module import LesionClassifierModule

    out, runs_dir, overrides = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    seen = {"train": [], "val": []}

    class RecordingDataset(dm.CachedImageDataset):
        def __getitem__(self, i):
            seen[self.split_name].append(int(self.indices[i]))
            return super().__getitem__(i)

    original_dataset = dm.LesionDataModule.dataset
    def recording_dataset(self, name, train_transform=False):
        dataset = original_dataset(self, name, train_transform)
        dataset.__class__, dataset.split_name = RecordingDataset, name
        return dataset
    dm.LesionDataModule.dataset = recording_dataset

    # Keep only the real validation epoch (not Lightning's sanity check).
    def forget_earlier_validation(self):
        seen["val"].clear()
    LesionClassifierModule.on_validation_epoch_start = forget_earlier_validation

    captured = {}
    original_fit = run.L.Trainer.fit
    def fit(self, *args, **kwargs):
        original_fit(self, *args, **kwargs)
        captured["metrics"] = {k: float(v) for k, v in self.callback_metrics.items() if k.startswith("val/")}
        captured["train_loss"] = float(self.callback_metrics["train/loss"])
        captured["world_size"] = self.world_size
        captured["train_sampler"] = type(self.train_dataloader.sampler).__name__
    run.L.Trainer.fit = fit

    config = load_config(None, [f"output.runs_dir={runs_dir}"] + overrides)
    result = run.train(config, progress=False)
    rank = int(os.environ["RANK"])
    (out / f"rank{rank}.json").write_text(json.dumps({
        "seen": seen, "run_dir": str(result.run_dir), **captured}))
''')


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> dict:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not installed")
    tmp = tmp_path_factory.mktemp("ddp")
    script = tmp / "train_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": str(REPO_ROOT / "src")}
    env.pop("DERMALENS_RUN_DIR", None)
    command = [torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(tmp), str(tmp / "runs"),
               *OVERRIDES]
    done = subprocess.run(command, env=env, cwd=tmp, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    ranks = [json.loads((tmp / f"rank{r}.json").read_text()) for r in (0, 1)]
    return {"tmp": tmp, "ranks": ranks}


def test_both_ranks_trained_in_one_run_folder(ddp_run):
    ranks = ddp_run["ranks"]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["run_dir"] == ranks[1]["run_dir"]  # agreed without --run-dir (torchrun's rendezvous id)
    # Lightning wrapped the ClassBalancedSampler to shard it.
    assert {r["train_sampler"] for r in ranks} == {"DistributedSamplerWrapper"}


def test_training_shards_are_disjoint_and_cover_the_epoch(ddp_run):
    run_dir = Path(ddp_run["ranks"][0]["run_dir"])
    config = load_config(run_dir / "config.yaml")
    prepared = prepare_data(config, run_dir, progress=False)
    train_rows = np.flatnonzero(prepared.split == "train")
    # The stream one process would draw in epoch 0 (same seed on every rank).
    stream = train_rows[list(ClassBalancedSampler(prepared.labels[train_rows], config["sampler"]["samples_per_class"],
                                                  seed=config["seed"], power=config["sampler"]["power"]))]
    assert len(set(stream.tolist())) == len(stream), "test set-up: the stream should not repeat rows"
    shard0, shard1 = (r["seen"]["train"] for r in ddp_run["ranks"])
    assert shard0 and shard1
    assert not set(shard0) & set(shard1)
    assert sorted(shard0 + shard1) == sorted(stream.tolist())


def test_validation_covers_each_image_once(ddp_run):
    run_dir = Path(ddp_run["ranks"][0]["run_dir"])
    prepared = prepare_data(load_config(run_dir / "config.yaml"), run_dir, progress=False)
    val_rows = np.flatnonzero(prepared.split == "val")
    seen = [r["seen"]["val"] for r in ddp_run["ranks"]]
    assert len(val_rows) % 2 == 1, "test set-up: an odd validation set is what padding would duplicate"
    assert sorted(seen[0] + seen[1]) == sorted(val_rows.tolist())  # no duplicates, none missing


def test_synced_validation_metrics_equal_one_process_on_the_whole_set(ddp_run):
    run_dir = Path(ddp_run["ranks"][0]["run_dir"])
    prepared = prepare_data(load_config(run_dir / "config.yaml"), run_dir, progress=False)
    val_rows = np.flatnonzero(prepared.split == "val")
    # last.ckpt holds the weights validation ran with (one epoch, saved after it).
    model, meta = load_classifier(run_dir / "checkpoints" / "last.ckpt")
    logits = predict_logits(model, prepared.images[val_rows], meta["preprocessing"], progress=False)
    metrics = validation_metrics(NUM_CLASSES)
    metrics.update(torch.from_numpy(logits).softmax(dim=1), torch.from_numpy(prepared.labels[val_rows]))
    expected = {f"val/{k}": float(v) for k, v in metrics.compute().items()}
    for rank in ddp_run["ranks"]:
        for key, value in expected.items():
            assert rank["metrics"][key] == pytest.approx(value, abs=1e-5), key


def test_the_epochs_training_loss_is_over_every_process(ddp_run):
    """train/loss was each process's own mean (what rank 0 logged was half the epoch's batches)."""
    losses = [rank["train_loss"] for rank in ddp_run["ranks"]]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


def test_files_are_written_once(ddp_run):
    runs = list((ddp_run["tmp"] / "runs").iterdir())
    assert len(runs) == 1
    run_dir = runs[0]
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    assert (run_dir / "report.md").is_file() and (run_dir / "metrics.json").is_file()
    assert not list(run_dir.rglob("*.tmp"))
    csv_logs = list(run_dir.rglob("metrics.csv"))
    assert len(csv_logs) == 1
