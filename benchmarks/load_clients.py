"""The load test's clients: predictions (a fixed number, or a soak for a duration) and explanation
clients asking all the time, with the latency figures both report. Used by load_test.py.
"""
from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from dermalens.serving.client import post_image


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list: the ceil(q/100 * n)-th smallest."""
    ordered = sorted(values)
    # ceil, not round(x + 0.5): Python rounds halves to even, which took the next value up whenever q/100 * n
    # was an odd whole number (the p95 of 20 values was their maximum).
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered) - 1e-9)))
    return ordered[rank - 1]


def latency_summary(milliseconds: list[float], quantiles=(50, 95, 99)) -> dict:
    """{"p50": .., "p95": .., ..., "max": ..} in ms, one decimal; {} for no values."""
    if not milliseconds:
        return {}
    return {**{f"p{q}": round(percentile(milliseconds, q), 1) for q in quantiles},
            "max": round(max(milliseconds), 1)}


class ExplainClients:
    """N threads that keep asking for explanations until stopped; client i asks for methods[i % len(methods)].

    Counts every answer by status, in all and per method, and keeps the seconds of completed ones."""

    def __init__(self, url: str, image: bytes, filename: str, clients: int, methods: list[str], timeout: float):
        self.timeout = timeout
        self.counts: dict[str, int] = {}
        self.seconds: list[float] = []
        self.clients = {method: sum(1 for i in range(clients) if methods[i % len(methods)] == method)
                        for method in dict.fromkeys(methods)}
        self.method_counts: dict[str, dict[str, int]] = {method: {} for method in self.clients}
        self.method_seconds: dict[str, list[float]] = {method: [] for method in self.clients}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._counting = True

        def client(method: str):
            fields = {"method": method, "format": "png"}
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    answer = post_image(url + "/api/explain", image, filename, fields=fields, timeout=timeout)
                    outcome = str(answer.status)
                    if answer.status in (503, 504) and "retry-after" not in answer.headers:
                        outcome += " without Retry-After"
                except OSError as error:
                    answer, outcome = None, f"error: {type(error).__name__}"
                seconds = time.perf_counter() - started
                with self._lock:
                    if not self._counting:
                        return
                    for counts in (self.counts, self.method_counts[method]):
                        counts[outcome] = counts.get(outcome, 0) + 1
                    if answer is not None and answer.status == 200:
                        self.seconds.append(seconds)
                        self.method_seconds[method].append(seconds)
                if answer is not None and answer.status in (503, 504):  # come back when told to
                    self._stop.wait(min(10.0, float(answer.headers.get("retry-after") or 1)))

        self._threads = [threading.Thread(target=client, args=(methods[i % len(methods)],), daemon=True,
                                          name=f"explain-client-{i}") for i in range(clients)]

    def __enter__(self) -> "ExplainClients":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        deadline = time.monotonic() + self.timeout
        for thread in self._threads:  # an explanation in flight is waited for, up to the request timeout
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:   # what came back before the server is stopped; later answers are not counted
            self._counting = False

    def failures(self) -> int:
        """Answers that are not 2xx, 503 or 504 with Retry-After: errors of the server or the connection."""
        return sum(n for outcome, n in self.counts.items() if outcome not in ("200", "503", "504"))

    def summary(self) -> dict:
        """All answers, and per method: clients, answers by status, 503/504 counts, latency of completed ones."""
        by_method = {}
        for method, counts in self.method_counts.items():
            busy = {code: sum(n for outcome, n in counts.items() if outcome.startswith(code)) for code in ("503", "504")}
            by_method[method] = {"clients": self.clients[method], "counts": counts,
                                 "completed": len(self.method_seconds[method]), **busy,
                                 "latency_ms": latency_summary([s * 1e3 for s in self.method_seconds[method]],
                                                               (50, 95))}
        return {"counts": self.counts, "completed_seconds": [round(x, 2) for x in self.seconds],
                "by_method": {method: {**record, "completed_seconds": [round(x, 2) for x in self.method_seconds[method]]}
                              for method, record in by_method.items()}}


def run_load(url: str, image: bytes, filename: str, requests: int, concurrency: int, timeout: float,
             max_seconds: float, duration_s: float | None = None) -> dict:
    """`requests` predictions, `concurrency` at a time, unsent after max_seconds; or, given duration_s, a soak:
    `concurrency` clients each sending one after another for duration_s seconds."""
    results: list[tuple[str, int | None, float, float]] = []   # (status class, status, seconds, sent at)
    lock = threading.Lock()
    started = time.perf_counter()

    def send() -> None:
        sent = time.perf_counter()
        status = None
        try:
            status = post_image(url + "/api/predict", image, filename, timeout=timeout).status
            outcome = f"{status // 100}xx"
        except OSError as error:  # refused, reset, timed out
            outcome = f"error: {type(error).__name__}"
        with lock:
            results.append((outcome, status, time.perf_counter() - sent, sent - started))

    if duration_s is None:
        deadline = time.monotonic() + max_seconds

        def one(_):
            if time.monotonic() <= deadline:
                send()
            else:
                with lock:
                    results.append(("not sent", None, 0.0, 0.0))
        jobs, work = requests, one
    else:
        def soak_client(_):
            while time.perf_counter() - started < duration_s:
                send()
        jobs, work = concurrency, soak_client
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(work, range(jobs)))
    wall = time.perf_counter() - started
    counts: dict[str, int] = {}
    codes: dict[str, int] = {}
    for outcome, status, _, _ in results:
        counts[outcome] = counts.get(outcome, 0) + 1
        if status is not None:
            codes[str(status)] = codes.get(str(status), 0) + 1
    # Served predictions only: a 503 ("queue full") answers at once, and counted with the rest it made the
    # latencies look shorter and the throughput higher than what was served.
    served = [seconds * 1e3 for outcome, _, seconds, _ in results if outcome == "2xx"]
    refused = [seconds * 1e3 for outcome, _, seconds, _ in results if outcome[0].isdigit() and outcome != "2xx"]
    latency = latency_summary(served)
    if served:
        latency["mean"] = round(sum(served) / len(served), 1)
    result = {"counts": counts, "status_codes": codes, "latency_ms": latency, "wall_seconds": round(wall, 2),
              "requests": sum(1 for outcome, *_ in results if outcome != "not sent"),
              "requests_per_second": round(len(served) / wall, 2) if wall else None}
    if refused:
        result["non_2xx_latency_ms"] = latency_summary(refused)
    if duration_s is not None:
        minutes: dict[int, list[float]] = {}
        for outcome, _, seconds, sent in results:
            if outcome == "2xx":
                minutes.setdefault(int(sent // 60), []).append(seconds * 1e3)
        result["duration_minutes"] = round(duration_s / 60, 3)
        result["per_minute"] = [{"minute": minute + 1, "requests": len(ms), **latency_summary(ms)}
                                for minute, ms in sorted(minutes.items())]
    return result


