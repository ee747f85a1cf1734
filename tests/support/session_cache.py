"""The per-user cache of one test session: made in the temporary folder, removed when the session ends, and
the leftovers of sessions that were killed (no atexit ran) removed by the next one.

A killed session (a CI timeout, Ctrl-C twice, kill -9) left its cache behind: up to 450 MB of ONNX exports and
trunk activations each time, in a folder nothing else ever cleans.
"""
from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

PREFIX = "dermalens-test-cache-"
# Caches named before their session's process id was part of the name: removed once this old.
UNOWNED_MAX_AGE_S = 24 * 3600
_OWNER = re.compile(rf"^{re.escape(PREFIX)}(\d+)-")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's live process
        return True
    return True


def remove_leftovers(folder: str | Path | None = None, now: float | None = None) -> list[Path]:
    """Remove the session caches in `folder` (default: the temporary folder) whose session has ended: its
    process is gone, or, for a name without a process id, it is older than a day. Returns what was removed."""
    folder = Path(folder or tempfile.gettempdir())
    now = time.time() if now is None else now
    removed = []
    for path in folder.glob(PREFIX + "*"):
        if not path.is_dir() or path.is_symlink():
            continue
        owner = _OWNER.match(path.name)
        try:
            ended = not process_alive(int(owner.group(1))) if owner else \
                now - path.stat().st_mtime > UNOWNED_MAX_AGE_S
        except OSError:   # removed meanwhile by its own session
            continue
        if ended:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def make_session_cache() -> str:
    """A fresh cache folder for this session, named by its process, removed when the process exits."""
    remove_leftovers()
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
