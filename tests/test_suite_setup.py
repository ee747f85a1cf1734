"""The suite's own setup: its pytest-xdist workers share the cores instead of oversubscribing them, and the
cache a killed session left behind is removed by the next one."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import session_cache
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


def dead_pid() -> int:
    """A process id that has just ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_sessions_cache_is_removed_and_a_live_ones_kept(tmp_path):
    killed = tmp_path / f"{session_cache.PREFIX}{dead_pid()}-abc"
    live = tmp_path / f"{session_cache.PREFIX}{os.getpid()}-def"
    for folder in (killed, live):
        (folder / "onnx").mkdir(parents=True)
        (folder / "onnx" / "model.onnx").write_bytes(b"x" * 1000)
    other = tmp_path / "someone-elses-folder"
    other.mkdir()
    assert session_cache.remove_leftovers(tmp_path) == [killed]
    assert not killed.exists() and live.is_dir() and other.is_dir()


def test_an_unnamed_cache_is_removed_only_when_a_day_old(tmp_path):
    old, recent = tmp_path / f"{session_cache.PREFIX}k2j4h1", tmp_path / f"{session_cache.PREFIX}x8d0q2"
    for folder in (old, recent):
        folder.mkdir()
    now = time.time()
    os.utime(old, (now - 2 * 24 * 3600, now - 2 * 24 * 3600))
    assert session_cache.remove_leftovers(tmp_path, now=now) == [old]
    assert recent.is_dir()


def test_the_sessions_cache_is_named_by_its_process_and_removed_when_it_exits(tmp_path):
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from support.session_cache import make_session_cache; "
              "print(make_session_cache())")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent)], capture_output=True,
                          text=True, env=env, check=True)
    made = Path(done.stdout.strip())
    assert made.parent == tmp_path and re.match(rf"{session_cache.PREFIX}\d+-", made.name)
    assert not made.exists()   # removed at exit
