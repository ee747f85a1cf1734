"""Load test of the dermalens web app: N prediction requests, C at a time, on loopback only.

    # against a running server (dermalens serve --model best.ckpt)
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --image lesion.jpg
    # or start `dermalens serve` here, in its own process, and stop it afterwards
    python benchmarks/load_test.py --model runs/demo/checkpoints/best.ckpt --image lesion.jpg
    # do predictions stay fast while SHAP explanations run? (200 predictions, 8 at a time, 2 SHAP clients)
    python benchmarks/load_test.py --model runs/demo/checkpoints/best.ckpt --shap-clients 2

Reports how many answers were 2xx/4xx/5xx (and connection errors) and the
p50/p95/p99/max latency; exits 1 on any 5xx, connection error, or request
not sent before --max-seconds. Bounded: at most --requests requests, each
with a --timeout, the whole run within --max-seconds. Research tool, not a
diagnosis: this measures plumbing, not medical performance.

With --shap-clients N the predictions run twice: alone, then while N
clients keep asking for SHAP explanations (each waits for its answer, and
after a 503/504 for the Retry-After it was given, as a well-behaved client
does). The explanation clients' answers are counted apart: 503 and 504
(server busy, time limit) are the server protecting itself and allowed;
any other 5xx, and any 5xx for a prediction, fails the run. It reports the
prediction p50/p95 of both runs and the p95 ratio (the target: at most 3x).
"""
from __future__ import annotations

import argparse
import os
import platform
import queue
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))  # runs from a plain checkout too

from dermalens.atomic_io import atomic_write_json  # noqa: E402
from dermalens.inference.runtimes import RUNTIME_HELP, RUNTIMES  # noqa: E402
from dermalens.serving.client import post_image, request  # noqa: E402
from dermalens.serving.server import is_loopback  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def default_image() -> Path | None:
    data = Path(os.environ.get("DERMALENS_DATA") or REPO_ROOT.parent / "shared" / "data")
    images = sorted((data / "ham10000_sample").glob("ISIC_*.jpg"))
    return images[0] if images else None


class ServeProcess:
    """`dermalens serve` on 127.0.0.1 and a free port, in its own process (as a user would run it)."""

    def __init__(self, model: Path, threads: int | None, torch_threads: int | None, start_timeout: float = 120,
                 runtime: str = "auto", options: dict | None = None):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT / "src"),
                                                                         os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "dermalens.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
                   "--port", "0", "--runtime", runtime]
        if threads:
            command += ["--threads", str(threads)]
        if torch_threads:
            command += ["--torch-threads", str(torch_threads)]
        for option, value in (options or {}).items():   # --predict-slots 2 ...: only those given
            if value is not None:
                command += [f"--{option.replace('_', '-')}", str(value)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=env)
        self.output: list[str] = []
        lines: queue.Queue = queue.Queue()

        def pump():
            for line in self.process.stdout:
                self.output.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + start_timeout
        self.url = None
        while self.url is None:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise SystemExit("error: dermalens serve did not start:\n" + "".join(self.output[-30:]))
            match = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
            self.url = match.group(1) if match else None

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


class ExplainClients:
    """N threads that keep asking for explanations until stopped; counts every answer by status."""

    def __init__(self, url: str, image: bytes, filename: str, clients: int, method: str, timeout: float):
        self.timeout = timeout
        self.counts: dict[str, int] = {}
        self.seconds: list[float] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._counting = True
        fields = {"method": method, "format": "png"}

        def client():
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    answer = post_image(url + "/api/explain", image, filename, fields=fields, timeout=timeout)
                    outcome = str(answer.status)
                    if answer.status in (503, 504) and "retry-after" not in answer.headers:
                        outcome += " without Retry-After"
                except OSError as error:
                    answer, outcome = None, f"error: {type(error).__name__}"
                with self._lock:
                    if not self._counting:
                        return
                    self.counts[outcome] = self.counts.get(outcome, 0) + 1
                    if answer is not None and answer.status == 200:
                        self.seconds.append(time.perf_counter() - started)
                if answer is not None and answer.status in (503, 504):  # come back when told to
                    self._stop.wait(min(10.0, float(answer.headers.get("retry-after") or 1)))

        self._threads = [threading.Thread(target=client, daemon=True, name=f"explain-client-{i}")
                         for i in range(clients)]

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


def run_load(url: str, image: bytes, filename: str, requests: int, concurrency: int, timeout: float,
             max_seconds: float) -> dict:
    deadline = time.monotonic() + max_seconds
    results: list[tuple[str, float]] = []   # (status class, seconds)
    lock = threading.Lock()

    def one(_):
        if time.monotonic() > deadline:
            outcome, seconds = "not sent", 0.0
        else:
            started = time.perf_counter()
            try:
                status = post_image(url + "/api/predict", image, filename, timeout=timeout).status
                outcome = f"{status // 100}xx"
            except OSError as error:  # refused, reset, timed out
                outcome = f"error: {type(error).__name__}"
            seconds = time.perf_counter() - started
        with lock:
            results.append((outcome, seconds))

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - started
    counts: dict[str, int] = {}
    for outcome, _ in results:
        counts[outcome] = counts.get(outcome, 0) + 1
    answered = [seconds * 1e3 for outcome, seconds in results if outcome[0].isdigit()]
    latency = {f"p{q}": round(percentile(answered, q), 1) for q in (50, 95, 99)} if answered else {}
    if answered:
        latency["max"] = round(max(answered), 1)
        latency["mean"] = round(sum(answered) / len(answered), 1)
    return {"counts": counts, "latency_ms": latency, "wall_seconds": round(wall, 2),
            "requests_per_second": round(len(answered) / wall, 2) if wall else None}


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server on this machine, e.g. http://127.0.0.1:8000")
    target.add_argument("--model", type=Path, help="checkpoint: start `dermalens serve` on a free port for the run")
    parser.add_argument("--image", type=Path, default=default_image(), help="image to send (default: a sample)")
    parser.add_argument("--requests", type=int, default=200, help="number of prediction requests (default 200)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="bound on the whole run (default 300)")
    parser.add_argument("--threads", type=int, help="with --model: waitress threads (default: the server's)")
    parser.add_argument("--torch-threads", type=int, help="with --model: torch threads (default: the server's)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto", help="with --model: " + RUNTIME_HELP)
    parser.add_argument("--shap-clients", type=int, default=0,
                        help="also run the predictions while this many clients keep asking for explanations "
                             "(default 0: predictions only)")
    parser.add_argument("--explain-method", default="shap", help="what those clients ask for (default shap)")
    for option, what in (("predict-slots", "predictions computed at once"),
                         ("explain-slots", "explanations computed at once"),
                         ("predict-queue", "predictions that may wait for a slot"),
                         ("explain-queue", "explanations that may wait for a slot"),
                         ("explain-timeout", "seconds a request waits for its explanation")):
        parser.add_argument(f"--{option}", type=float if option == "explain-timeout" else int,
                            help=f"with --model: the server's {what} (default: the server's)")
    parser.add_argument("--output", type=Path, help="also write the results (and settings) to this JSON file")
    args = parser.parse_args(argv)

    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 256 or not 0 <= args.shap_clients <= 64:
        parser.error("--requests must be 1..100000, --concurrency 1..256 and --shap-clients 0..64")
    if args.image is None or not args.image.is_file():
        parser.error(f"image not found: {args.image} (give --image PATH)")
    if args.url and not is_loopback(urlparse(args.url).hostname or ""):
        parser.error(f"{args.url} is not on this machine: the load test only runs against loopback addresses")

    options = {key: getattr(args, key) for key in ("predict_slots", "predict_queue", "explain_slots", "explain_queue",
                                                  "explain_timeout")}
    server = ServeProcess(args.model, args.threads, args.torch_threads, runtime=args.runtime,
                          options=options) if args.model else None
    explain_clients = None
    try:
        url = (server.url if server else args.url).rstrip("/")
        try:
            health = request(url + "/health", timeout=args.timeout)
        except OSError as error:
            raise SystemExit(f"error: cannot reach {url}/health: {error}") from None
        if health.status != 200:
            raise SystemExit(f"error: {url}/health answered {health.status}: {health.body[:200]!r}")
        model = request(url + "/api/model", timeout=args.timeout).json()
        image = args.image.read_bytes()
        post_image(url + "/api/predict", image, args.image.name, timeout=args.timeout)  # warm-up, not counted
        print(f"load test: {args.requests} x POST {url}/api/predict, {args.concurrency} at a time, "
              f"image {args.image.name} ({len(image) / 1024:.0f} KB), model {model['name']} "
              f"{model['input_size']} px, predicted by {model.get('inference_engine', '?')}")
        result = run_load(url, image, args.image.name, args.requests, args.concurrency, args.timeout,
                          args.max_seconds)
        report("predictions alone" if args.shap_clients else "predictions", result)
        if args.shap_clients:
            print(f"again, while {args.shap_clients} clients keep asking for {args.explain_method} explanations")
            # A client waits longer than the server's own explanation time limit, so it gets the 504.
            explain_timeout = max(args.timeout, float(model.get("limits", {}).get("explain_timeout", 0)) + 30)
            with ExplainClients(url, image, args.image.name, args.shap_clients, args.explain_method,
                                explain_timeout) as explain_clients:
                result["with_explanations"] = run_load(url, image, args.image.name, args.requests,
                                                       args.concurrency, args.timeout, args.max_seconds)
            report(f"predictions with {args.shap_clients} {args.explain_method} clients",
                   result["with_explanations"])
            result["explain_clients"] = {"counts": explain_clients.counts,
                                         "completed_seconds": [round(x, 2) for x in explain_clients.seconds]}
            print("explanation answers: " + ", ".join(f"{k} {v}" for k, v in sorted(explain_clients.counts.items()))
                  + " (503/504 with Retry-After: the server protecting its capacity)")
            alone, loaded = result["latency_ms"].get("p95"), result["with_explanations"]["latency_ms"].get("p95")
            if alone and loaded:
                result["p95_ratio"] = round(loaded / alone, 2)
                print(f"prediction p95 with explanations / alone: {result['p95_ratio']}x "
                      f"(target <= 3x: {'met' if result['p95_ratio'] <= 3 else 'missed'})")
    finally:
        if server:
            server.stop()

    failures = prediction_failures(result["counts"])
    if "with_explanations" in result:
        failures += prediction_failures(result["with_explanations"]["counts"])
    explain_failures = explain_clients.failures() if explain_clients else 0
    if args.output:
        record = {
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "result": result, "model": {k: model.get(k) for k in ("name", "version", "checkpoint", "input_size",
                                                                   "inference_engine")},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "git_commit": git_commit(), "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(args.output, record)
        print(f"results written to {args.output}")
    if failures:
        print(f"FAILED: {failures} predictions got a 5xx, a connection error or were not sent in time",
              file=sys.stderr)
    if explain_failures:
        print(f"FAILED: {explain_failures} explanation requests got an error other than 503/504 with Retry-After",
              file=sys.stderr)
    return 1 if failures or explain_failures else 0


def prediction_failures(counts: dict[str, int]) -> int:
    return sum(n for outcome, n in counts.items() if outcome == "5xx" or not outcome[0].isdigit())


def report(title: str, result: dict) -> None:
    counts, latency = result["counts"], result["latency_ms"]
    print(f"{title}: " + ", ".join(f"{outcome} {counts.get(outcome, 0)}" for outcome in ("2xx", "4xx", "5xx"))
          + "".join(f", {outcome} {n}" for outcome, n in sorted(counts.items()) if not outcome[0].isdigit()))
    if latency:
        print(f"  latency ms: p50 {latency['p50']}  p95 {latency['p95']}  p99 {latency['p99']}  max {latency['max']}"
              f"  (mean {latency['mean']})")
    print(f"  throughput: {result['requests_per_second']} requests/s over {result['wall_seconds']} s")


if __name__ == "__main__":
    sys.exit(main())
