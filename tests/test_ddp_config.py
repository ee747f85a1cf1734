"""Distributed-training plumbing without processes: the un-padded evaluation sampler, the shared run
folder, and the training.compile switch."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DistributedSampler

from dermalens.config import ConfigError, load_config
from dermalens.data.sampler import UnpaddedDistributedSampler, evaluation_sampler
from dermalens.training import distributed
from dermalens.training.distributed import RUN_DIR_ENV, may_launch_processes, shared_run_dir
from dermalens.training.module import LesionClassifierModule

pytestmark = pytest.mark.unit
LAUNCH_VARIABLES = ("WORLD_SIZE", "SLURM_NTASKS", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", RUN_DIR_ENV)


@pytest.mark.parametrize("size,world", [(15, 2), (16, 2), (7, 4), (2, 3), (0, 2)])
def test_unpadded_sampler_gives_each_row_to_one_rank(size, world):
    dataset = list(range(size))
    shards = [list(UnpaddedDistributedSampler(dataset, world, rank)) for rank in range(world)]
    assert sorted(sum(shards, [])) == dataset  # every row once: no padding, nothing dropped
    assert [len(UnpaddedDistributedSampler(dataset, world, r)) for r in range(world)] == [len(s) for s in shards]
    # A DistributedSampler, so Lightning does not replace it with its padding one.
    assert isinstance(UnpaddedDistributedSampler(dataset, world, 0), DistributedSampler)


def test_evaluation_sampler_only_under_several_processes():
    dataset = list(range(5))
    assert evaluation_sampler(dataset, None) is None
    assert evaluation_sampler(dataset, SimpleNamespace(world_size=1, global_rank=0)) is None
    sampler = evaluation_sampler(dataset, SimpleNamespace(world_size=3, global_rank=2))
    assert list(sampler) == [2]


@pytest.fixture
def clean_launch_env(monkeypatch):
    for key in LAUNCH_VARIABLES:
        # setenv first so that monkeypatch restores the original state, even
        # for a variable shared_run_dir sets itself.
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    return monkeypatch


def make_new(config):
    return Path("runs") / "fresh"


def test_single_process_gets_a_new_folder_and_leaves_no_trace(clean_launch_env):
    config = load_config(None, ["training.devices=1"])
    assert shared_run_dir(config, make_new) == Path("runs/fresh")
    assert RUN_DIR_ENV not in distributed.os.environ  # a second run in this process gets its own folder


def test_lightning_launched_ranks_inherit_the_folder(clean_launch_env):
    config = load_config(None, ["training.accelerator=cpu", "training.devices=2", "training.strategy=ddp"])
    assert may_launch_processes(config)
    first = shared_run_dir(config, make_new)
    assert distributed.os.environ[RUN_DIR_ENV] == str(first)
    assert shared_run_dir(config, lambda c: Path("runs/other")) == first


@pytest.mark.parametrize("variables,expected", [
    ({"WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "abc123"}, "runs/demo-abc123"),
    ({"SLURM_NTASKS": "8", "SLURM_JOB_ID": "4242"}, "runs/demo-slurm4242"),
])
def test_launcher_job_id_names_the_folder(clean_launch_env, variables, expected):
    for key, value in variables.items():
        clean_launch_env.setenv(key, value)
    config = load_config(None, ["name=demo", "output.runs_dir=runs"])
    assert shared_run_dir(config, make_new) == Path(expected)


def test_several_processes_without_a_job_id_need_a_run_dir(clean_launch_env):
    clean_launch_env.setenv("WORLD_SIZE", "2")
    clean_launch_env.setenv("TORCHELASTIC_RUN_ID", "none")
    with pytest.raises(ConfigError, match="--run-dir"):
        shared_run_dir(load_config(None), make_new)


@pytest.mark.parametrize("devices,nodes,expected", [(1, 1, False), ("1", 1, False), (2, 1, True), ([0, 1], 1, True),
                                                    ("0,1", 1, True), (1, 2, True)])
def test_may_launch_processes(devices, nodes, expected):
    config = load_config(None)
    config["training"].update(devices=devices, num_nodes=nodes, accelerator="cpu")
    assert may_launch_processes(config) is expected


def test_compile_switch(monkeypatch):
    assert load_config(None)["training"]["compile"] is False
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    kwargs = dict(model={"backbone": "efficientnet_lite0", "image_size": 32, "pretrained": "none"}, loss={},
                  optimizer={}, scheduler={}, class_counts=[1] * 7)
    LesionClassifierModule(**kwargs, training={})
    assert compiled == []
    module = LesionClassifierModule(**kwargs, training={"compile": True})
    assert compiled == ["LesionClassifier"]
    # Compiled in place: checkpoints keep the keys load_classifier expects.
    assert all(k.startswith("model.") and "_orig_mod" not in k for k in module.state_dict() if "criterion" not in k)
