"""Wall time and peak disk use of the test suite, as CI runs it.

    python benchmarks/test_suite_footprint.py                     # the whole suite (about 8 min on 2 cores)
    python benchmarks/test_suite_footprint.py -- -n 0             # in one process, without pytest-xdist (13 min)
    python benchmarks/test_suite_footprint.py -- -m unit          # any pytest arguments after --

Runs `python -m pytest -q` with `$TMPDIR` pointed at a fresh folder, so that
everything the suite writes (pytest's temporary folders, the session's
per-user cache, exports) lands there, and samples that folder's size on
disk every `--every` seconds. The peak is what a CI machine's temporary
folder must have free (tests/conftest.py warns below it); the folder is
removed afterwards. Writes results/test_suite_footprint.json. The suite's pytest-xdist workers
(pyproject.toml's addopts) share that folder: the peak is theirs together.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPOSITORY, format_table, print_machine, write_result  # noqa: E402


def disk_use(folder: Path) -> int:
    """Bytes on disk under `folder` (blocks, as `du` counts them); files vanishing meanwhile are skipped."""
    total = 0
    for directory, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
            except OSError:
                continue
    return total


class PeakSampler(threading.Thread):
    """Samples `disk_use(folder)` every `every` seconds until stopped; keeps the peak."""

    def __init__(self, folder: Path, every: float):
        super().__init__(daemon=True)
        self.folder, self.every = folder, every
        self.peak = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, disk_use(self.folder))
            self.samples += 1
            self._stop_event.wait(self.every)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, disk_use(self.folder))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=float, default=2.0, help="seconds between disk samples")
    parser.add_argument("--out", help="result file (default benchmarks/results/test_suite_footprint.json)")
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest")
    args = parser.parse_args(argv)
    print_machine()
    folder = Path(tempfile.mkdtemp(prefix="dermalens-suite-"))
    environment = {**os.environ, "TMPDIR": str(folder)}
    environment.pop("DERMALENS_CACHE", None)   # the suite makes its own cache, in the temporary folder
    sampler = PeakSampler(folder, args.every)
    command = [sys.executable, "-m", "pytest", "-q", *args.pytest_args]
    start = time.perf_counter()
    sampler.start()
    try:
        result = subprocess.run(command, cwd=REPOSITORY, env=environment, capture_output=True, text=True)
    finally:
        sampler.stop()
        left_after = disk_use(folder)
        shutil.rmtree(folder, ignore_errors=True)
    seconds = time.perf_counter() - start
    summary = next((line for line in reversed(result.stdout.splitlines()) if " in " in line and "=" not in line
                    or line.startswith("=") and (" passed" in line or " failed" in line)), "")
    row = {"pytest_arguments": " ".join(args.pytest_args) or "(all)", "exit_code": result.returncode,
           "summary": summary.strip("= "), "wall_min": round(seconds / 60, 2),
           "peak_disk_mb": round(sampler.peak / 1e6), "left_after_mb": round(left_after / 1e6, 1),
           "samples": sampler.samples}
    print(format_table([row]))
    if result.returncode != 0:
        print(result.stdout[-4000:], file=sys.stderr)
    path = write_result("test_suite_footprint", [row], {"every_s": args.every, "command": " ".join(command[1:])},
                        [f"$TMPDIR pointed at a fresh folder; its size on disk sampled every {args.every:g} s"],
                        out=args.out)
    print(f"wrote {path}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
