"""How much work of one kind the server takes on at once, and what it says when that is full.

Predictions take milliseconds, explanations seconds (SHAP on a big model:
up to a minute). If they shared one queue, every prediction would wait
behind whichever explanation ran. So each kind has its own capacity: a
number of slots that compute at once and a bounded queue of requests that
wait for one. A request that finds slots and queue full is answered at once
with 503 and a Retry-After header instead of joining an ever longer line:
a waiting client holds a server thread and a socket, and a line that only
grows makes every answer late.

`Capacity.slot()` bounds work done in the request's own thread
(predictions). `WorkerPool.run()` hands work to its own threads and waits at
most a time limit (explanations): Python cannot stop a running thread, and
SHAP has no hook to give up half-way, so a job that overruns goes on in its
worker and keeps its slot until it finishes, while its request is answered
504. That is also why its slot stays counted: runaway jobs can never pile up
beyond the pool's size.
"""
from __future__ import annotations

import math
import threading
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")
# The largest upload decoded, in pixels (`dermalens serve --max-megapixels`). 25 MP: a 6000 x 4000 camera photo
# fits; Pillow needs a few hundred MB while it decodes one that large, and a queued request holds its decoded
# image, so this bounds the server's memory as the slots bound its work.
DEFAULT_MAX_PIXELS = 25_000_000


@dataclass(frozen=True)
class Limits:
    """The server's capacities (`dermalens serve --predict-slots ...`, keyword arguments of `create_app`)."""

    predict_slots: int = 2          # predictions computed at once
    predict_queue: int = 16         # predictions that may wait for a slot (milliseconds each: a long line is short)
    explain_slots: int = 1          # explanations computed at once
    explain_queue: int = 2          # explanations that may wait for a slot (seconds each: a short line is long)
    queue_timeout: float = 30.0     # seconds a prediction waits for a slot
    explain_timeout: float = 120.0  # seconds a request waits for its explanation (queue included)
    # Uploads decoded at once, whatever the route: a 25-megapixel image takes a few hundred MB while Pillow
    # decodes it, so a burst of large uploads must not decode on every server thread at the same time.
    decode_slots: int = 2

    def __post_init__(self):
        if min(self.predict_slots, self.explain_slots, self.decode_slots) < 1 or self.predict_queue < 0 \
                or self.explain_queue < 0:
            raise ValueError(f"slots must be at least 1 and queues at least 0: {self}")
        for name in ("queue_timeout", "explain_timeout"):
            seconds = getattr(self, name)
            # inf overflowed the deadline arithmetic (500s) and nan made every explanation a 504.
            if not (math.isfinite(seconds) and seconds > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {seconds}")

    @property
    def server_threads(self) -> int:
        """Waitress threads that let every slot and queue place be taken at the same time; with
        fewer, waitress itself queues requests (without bound or 503) before these limits see them."""
        return self.predict_slots + self.predict_queue + self.explain_slots + self.explain_queue


class Overloaded(RuntimeError):
    """All slots and queue places of one kind are taken (answered 503 with Retry-After)."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class TimeLimitExceeded(RuntimeError):
    """The work did not finish within its time limit (answered 504 with Retry-After)."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Capacity:
    """At most `slots` jobs of one kind at once and `queue` more waiting; beyond that, `Overloaded`."""

    def __init__(self, kind: str, slots: int, queue: int, wait_seconds: float | None = None):
        self.kind, self.slots, self.queue, self.wait_seconds = kind, int(slots), int(queue), wait_seconds
        self._free = threading.BoundedSemaphore(self.slots)
        self._lock = threading.Lock()
        self._admitted = 0                  # computing + waiting
        self._mean_seconds: float | None = None

    @property
    def admitted(self) -> int:
        return self._admitted

    def check_room(self) -> None:
        """Overloaded if no place is free now: lets a request be refused before its upload is decoded
        (`admit` still decides; a place may be taken in between)."""
        if self._admitted >= self.slots + self.queue:
            raise self._full()

    def admit(self) -> None:
        """Take a place (a slot or the queue) or raise Overloaded; pair with `release`."""
        with self._lock:
            if self._admitted >= self.slots + self.queue:
                raise self._full()
            self._admitted += 1

    def _full(self) -> Overloaded:
        return Overloaded(f"server busy: all {self.slots} {self.kind} slot(s) and {self.queue} queue "
                          f"place(s) are taken; try again later", self.retry_after())

    def release(self, seconds: float | None = None) -> None:
        with self._lock:
            self._admitted -= 1
            if seconds is not None:  # a moving average of how long one job takes, for Retry-After
                self._mean_seconds = seconds if self._mean_seconds is None else \
                    0.8 * self._mean_seconds + 0.2 * seconds

    def retry_after(self) -> int:
        """Whole seconds until a slot is likely free: one job's typical duration (at least 1)."""
        return max(1, math.ceil(self._mean_seconds or 1.0))

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Compute in the caller's thread once a slot is free, waiting at most `wait_seconds` for it."""
        self.admit()
        if not self._free.acquire(timeout=self.wait_seconds):
            self.release()
            raise Overloaded(f"server busy: no {self.kind} slot became free within {self.wait_seconds:g} s; "
                             f"try again later", self.retry_after())
        started = time.perf_counter()
        try:
            yield
        finally:
            self._free.release()
            self.release(time.perf_counter() - started)


class WorkerPool:
    """`slots` worker threads, `queue` waiting jobs, and a time limit on how long a caller waits."""

    def __init__(self, kind: str, slots: int, queue: int, time_limit: float):
        self.capacity = Capacity(kind, slots, queue)
        self.time_limit = float(time_limit)
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix=f"dermalens-{kind}")

    def run(self, work: Callable[..., T], *args, **kwargs) -> T:
        """work(*args, **kwargs) on a worker; Overloaded when full, TimeLimitExceeded after the limit."""
        capacity = self.capacity
        capacity.admit()
        timing: dict[str, float] = {}

        def timed():
            timing["started"] = time.perf_counter()
            return work(*args, **kwargs)

        future = self._pool.submit(timed)
        # The place is given back when the job ends (or is cancelled), not when the caller stops waiting.
        future.add_done_callback(lambda _: capacity.release(
            time.perf_counter() - timing["started"] if "started" in timing else None))
        try:
            return future.result(timeout=self.time_limit)
        except FutureTimeout:
            if future.cancel():  # still queued: it never starts, its place is free again
                where = f"it waited {self.time_limit:g} s for a free {capacity.kind} slot"
            else:
                where = ("it is still running and keeps its slot until it finishes "
                         "(explanations cannot be stopped half-way)")
            raise TimeLimitExceeded(f"{capacity.kind} did not finish within the time limit of "
                                    f"{self.time_limit:g} s: {where}; try again later, or with a cheaper method",
                                    capacity.retry_after()) from None
        except CancelledError:  # the pool was shut down with this job still queued
            raise Overloaded(f"server stopping: the {capacity.kind} was not started", capacity.retry_after()) from None

    def shutdown(self) -> None:
        """Drop queued jobs; running ones finish in their threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
