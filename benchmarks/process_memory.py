"""Resident memory (RSS) of a process and its children, sampled on a thread while a benchmark runs.

    with RssSampler(pid, interval=5.0) as sampler:
        ...   # the load
    summary = sampler.summary(window=(soak_started, soak_ended))   # time.monotonic() values

The summary holds the samples, the start/max/end RSS in MB and two
least-squares slopes in MB per minute over the second half of the window (so
that growth while caches and thread pools warm up does not count):

- `floor_slope_mb_per_min`, of the floor: the lowest sample in each
  FLOOR_BIN_S-second bin, the memory the process comes back to between
  requests. A leak raises the floor; an explanation's working memory, held
  for seconds and then freed, does not. Memory is called flat when this slope
  is below FLAT_SLOPE_MB_PER_MIN.
- `slope_mb_per_min`, of every sample. With explanations running it mostly
  says when the last big batches happened to be sampled: in a 10-minute soak
  beside SHAP clients the samples jumped between a floor of 2,117 MB and
  peaks up to 2,842 MB; the slope of every sample was 13 MB/min while the
  floor rose 0.7 MB in five minutes.

Read from /proc/<pid>/status (VmRSS): psutil, which reads the same file on
Linux, is not a dependency of dermalens. Where /proc is missing there are no
samples and the summary says so instead of failing the benchmark.
"""
from __future__ import annotations

import math
import re
import statistics
import threading
import time
from pathlib import Path

FLAT_SLOPE_MB_PER_MIN = 1.0
FLOOR_BIN_S = 30.0
PROC = Path("/proc")


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of pid, from each process's parent in /proc/*/stat."""
    parents: dict[int, list[int]] = {}
    for stat in PROC.glob("[0-9]*/stat"):
        try:
            # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):   # exited while listed, or unreadable
            continue
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    found, frontier = [], [pid]
    while frontier:
        children = parents.get(frontier.pop(), [])
        found += children
        frontier += children
    return found


def process_tree_rss_mb(pid: int) -> float | None:
    """VmRSS of pid plus its descendants in MB (shared pages counted once per process); None if pid is gone."""
    total_kb, seen = 0, False
    for member in [pid, *descendants(pid)]:
        try:
            status = (PROC / str(member) / "status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+)\s+kB", status, re.MULTILINE)
        if match:
            total_kb, seen = total_kb + int(match.group(1)), True
    return total_kb / 1024 if seen else None


def slope_mb_per_minute(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) samples, in MB per minute; None below two distinct times."""
    if len({t for t, _ in samples}) < 2:
        return None
    return statistics.linear_regression([t / 60 for t, _ in samples], [mb for _, mb in samples]).slope


def floor_samples(samples: list[tuple[float, float]], bin_s: float = FLOOR_BIN_S) -> list[tuple[float, float]]:
    """(mean time, lowest MB) of each `bin_s`-second bin of (seconds, MB) samples, counted from the first.

    A bin holding fewer than half the samples a full bin has (the last, cut short by the end of the
    run) is left out: its lowest sample may be a peak, which alone would tilt the slope.
    """
    if not samples:
        return []
    bins: dict[int, list[tuple[float, float]]] = {}
    origin = samples[0][0]
    for t, mb in samples:
        bins.setdefault(int((t - origin) // bin_s), []).append((t, mb))
    # The spacing the samples really have (a busy machine samples late), not the one asked for.
    spacing = statistics.median(b[0] - a[0] for a, b in zip(samples, samples[1:])) if len(samples) > 1 else 0
    # ceil: with samples a little over 5 s apart, int() asked for 2 of a full bin's 6 where half is 3
    needed = max(1, math.ceil(0.5 * bin_s / spacing - 1e-9)) if spacing > 0 else 1
    return [(statistics.fmean(t for t, _ in members), min(mb for _, mb in members))
            for _, members in sorted(bins.items()) if len(members) >= needed]


class RssSampler:
    """Samples process_tree_rss_mb(pid) every `interval` seconds, and once more when stopped."""

    def __init__(self, pid: int, interval: float = 5.0):
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []   # (time.monotonic(), MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def sample(self) -> None:
        rss = process_tree_rss_mb(self.pid)
        if rss is not None:
            self.samples.append((time.monotonic(), rss))

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def start(self) -> "RssSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops sampling, with a last sample; stopping twice samples once."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self.sample()

    def __enter__(self) -> "RssSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def summary(self, window: tuple[float, float] | None = None) -> dict:
        """Samples (seconds since the first, MB) and their figures; the slopes over the window's second half."""
        result: dict = {"pid": self.pid, "interval_s": self.interval, "flat_threshold_mb_per_min":
                        FLAT_SLOPE_MB_PER_MIN, "samples": []}
        if not self.samples:
            return {**result, "note": f"no RSS could be read for pid {self.pid} (no /proc, or the process ended)"}
        origin = self.samples[0][0]
        start, end = window or (origin, self.samples[-1][0])
        middle = start + (end - start) / 2
        # The sample taken when the sampler stops may come just after the window: it still belongs to it.
        late = end + self.interval
        tail = [(t - origin, mb) for t, mb in self.samples if middle <= t <= late]
        slope = slope_mb_per_minute(tail)
        floor = floor_samples(tail, max(FLOOR_BIN_S, self.interval))
        floor_slope = slope_mb_per_minute(floor)
        return {**result,
                "samples": [[round(t - origin, 1), round(mb, 1)] for t, mb in self.samples],
                "start_mb": round(self.samples[0][1], 1), "max_mb": round(max(mb for _, mb in self.samples), 1),
                "end_mb": round(self.samples[-1][1], 1),
                "slope_window_s": [round(middle - origin, 1), round(min(late, self.samples[-1][0]) - origin, 1)],
                "slope_samples": len(tail),
                "slope_mb_per_min": None if slope is None else round(slope, 3),
                "floor_bin_s": max(FLOOR_BIN_S, self.interval), "floor_bins": len(floor),
                "floor_mb": [round(floor[0][1], 1), round(floor[-1][1], 1)] if floor else None,
                "floor_slope_mb_per_min": None if floor_slope is None else round(floor_slope, 3),
                "flat": None if floor_slope is None else floor_slope < FLAT_SLOPE_MB_PER_MIN}
