"""The suite's own setup: its pytest-xdist workers share the cores instead of oversubscribing them."""
from __future__ import annotations

import os

import pytest

from support.workers import split_cores_between_workers

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("workers, cores, threads", [("2", 2, "1"), ("2", 16, "8"), ("3", 2, "1"), ("4", 6, "1")])
def test_each_worker_gets_its_share_of_the_cores(workers, cores, threads):
    environ = {"PYTEST_XDIST_WORKER_COUNT": workers}
    assert split_cores_between_workers(environ, cores=cores) == threads
    assert environ["OMP_NUM_THREADS"] == threads


@pytest.mark.parametrize("environ", [{}, {"PYTEST_XDIST_WORKER_COUNT": "1"}])
def test_one_process_keeps_every_core(environ):
    assert split_cores_between_workers(environ, cores=8) is None
    assert "OMP_NUM_THREADS" not in environ


def test_a_thread_count_the_user_set_is_kept():
    environ = {"PYTEST_XDIST_WORKER_COUNT": "2", "OMP_NUM_THREADS": "3"}
    assert split_cores_between_workers(environ, cores=2) == "3"


def test_this_worker_computes_on_the_threads_it_was_given():
    """The split reached torch: conftest set it before torch was first imported."""
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0) < 2:
        pytest.skip("the suite runs in one process here (-n 0 or -n 1): no cores are shared")
    import torch

    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])
