"""How the suite's pytest-xdist workers (pyproject's addopts: `-n 2`) share the machine's cores.

Torch-free: tests/conftest.py calls `split_cores_between_workers` before anything imports torch.
"""
from __future__ import annotations

import os
from typing import MutableMapping


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def split_cores_between_workers(environ: MutableMapping[str, str] = os.environ,
                                cores: int | None = None) -> str | None:
    """Under pytest-xdist, each worker computes on its share of the cores (at least one thread); returns the
    OMP_NUM_THREADS now in `environ` (None outside xdist or with one worker: all cores stay in use).

    Two workers of two threads each on a 2-core machine ran the suite 1.26x slower than two workers of one
    (602 s against 477 s, one run each on the same VM): OpenMP's threads spin while they wait, and on
    oversubscribed cores they wait for each other. It must run before torch is first imported (torch reads OMP_NUM_THREADS when it starts its
    threads); the command lines tests start inherit it. A value the user set is kept."""
    workers = int(environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers < 2:
        return None
    share = max(1, (cores or available_cores()) // workers)
    return environ.setdefault("OMP_NUM_THREADS", str(share))
