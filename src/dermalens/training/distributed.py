"""Multi-GPU / multi-node training on Lightning's DDP strategy: the few pieces dermalens adds.

Lightning does the heavy lifting (process group, gradient all-reduce,
rank-0-only checkpoints and logs, wrapping the training sampler in a
`DistributedSamplerWrapper` so every rank draws its own shard of the
class-balanced stream). Two things it gets wrong for us, fixed here:

- Evaluation loaders: Lightning's default `DistributedSampler` pads the
  validation set to a multiple of the world size by repeating images, so
  synced metrics would count some images twice. `UnpaddedDistributedSampler`
  (in data/sampler.py, beside the other samplers) gives every image to
  exactly one rank; torchmetrics then gathers the uneven shards.
- The run folder: every process of a job must write into the same one,
  but each computes its own timestamp. `shared_run_dir` makes them agree.

Launching (torchrun, SLURM) is described in docs/distributed.md.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..config import ConfigError

# Set by the first process so that processes Lightning launches later
# (strategy=ddp without torchrun) inherit the same run folder.
RUN_DIR_ENV = "DERMALENS_RUN_DIR"


def launched_world_size() -> int:
    """How many processes the launcher (torchrun, SLURM) started; 1 when none did."""
    for key in ("WORLD_SIZE", "SLURM_NTASKS"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 1


def launcher_job_id() -> str | None:
    """An id all processes of one launch share (SLURM job, torchrun rendezvous), if any."""
    slurm = os.environ.get("SLURM_JOB_ID")
    if slurm:
        return f"slurm{slurm}"
    rdzv = os.environ.get("TORCHELASTIC_RUN_ID")
    if rdzv and rdzv != "none":  # torchrun without --rdzv-id/--standalone says "none"
        return rdzv[:12]
    return None


def shared_run_dir(config: dict, make_new: Callable[[dict], Path]) -> Path:
    """The run folder of this job, the same in every process.

    One process: a new timestamped folder (`make_new`). Several launched by
    torchrun/SLURM: `<runs_dir>/<name>-<job id>`; without a job id pass
    --run-dir. Lightning's own launcher (strategy=ddp, no torchrun) starts
    the other ranks after this ran, and they inherit the folder through
    $DERMALENS_RUN_DIR.
    """
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:
        return Path(inherited)
    if launched_world_size() > 1:
        job_id = launcher_job_id()
        if job_id is None:
            raise ConfigError("several processes were launched but no run folder was given: pass "
                              "--run-dir (torchrun --rdzv-id or --standalone, or SLURM, also name it)")
        run_dir = Path(config["output"]["runs_dir"]) / f"{config['name']}-{job_id}"
    else:
        run_dir = make_new(config)
        if may_launch_processes(config):
            os.environ[RUN_DIR_ENV] = str(run_dir)
    return run_dir


def may_launch_processes(config: dict) -> bool:
    """Whether Lightning will start more processes for this config (several devices or nodes)."""
    t = config["training"]
    if int(t["num_nodes"] or 1) > 1:
        return True
    devices = t["devices"]
    if devices in ("auto", -1, "-1", None):
        import torch

        return t["accelerator"] in ("auto", "gpu", "cuda") and torch.cuda.device_count() > 1
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()]) > 1
    return int(devices) > 1
