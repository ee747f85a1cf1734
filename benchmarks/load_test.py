"""Load test of the dermalens web app: N prediction requests, C at a time, on loopback only.

    # against a running server (dermalens serve --model best.ckpt)
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --image lesion.jpg
    # or start `dermalens serve` here, in its own process, and stop it afterwards
    python benchmarks/load_test.py --model runs/demo/checkpoints/best.ckpt --image lesion.jpg

Reports how many answers were 2xx/4xx/5xx (and connection errors) and the
p50/p95/p99/max latency; exits 1 on any 5xx, connection error, or request
not sent before --max-seconds. Bounded: at most --requests requests, each
with a --timeout, the whole run within --max-seconds. Research tool, not a
diagnosis: this measures plumbing, not medical performance.
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

    def __init__(self, model: Path, threads: int, torch_threads: int | None, start_timeout: float = 120,
                 runtime: str = "auto"):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT / "src"),
                                                                         os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "dermalens.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
                   "--port", "0", "--threads", str(threads), "--runtime", runtime]
        if torch_threads:
            command += ["--torch-threads", str(torch_threads)]
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
    parser.add_argument("--threads", type=int, default=4, help="with --model: waitress threads (default 4)")
    parser.add_argument("--torch-threads", type=int, help="with --model: torch threads (default: the server's)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto", help="with --model: " + RUNTIME_HELP)
    parser.add_argument("--output", type=Path, help="also write the results (and settings) to this JSON file")
    args = parser.parse_args(argv)

    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 256:
        parser.error("--requests must be 1..100000 and --concurrency 1..256")
    if args.image is None or not args.image.is_file():
        parser.error(f"image not found: {args.image} (give --image PATH)")
    if args.url and not is_loopback(urlparse(args.url).hostname or ""):
        parser.error(f"{args.url} is not on this machine: the load test only runs against loopback addresses")

    server = ServeProcess(args.model, args.threads, args.torch_threads, runtime=args.runtime) if args.model else None
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
    finally:
        if server:
            server.stop()

    counts = result["counts"]
    failures = sum(n for outcome, n in counts.items() if outcome == "5xx" or not outcome[0].isdigit())
    latency = result["latency_ms"]
    print("answers: " + ", ".join(f"{outcome} {counts.get(outcome, 0)}" for outcome in ("2xx", "4xx", "5xx"))
          + "".join(f", {outcome} {n}" for outcome, n in sorted(counts.items()) if not outcome[0].isdigit()))
    if latency:
        print(f"latency ms: p50 {latency['p50']}  p95 {latency['p95']}  p99 {latency['p99']}  max {latency['max']}"
              f"  (mean {latency['mean']})")
    print(f"throughput: {result['requests_per_second']} requests/s over {result['wall_seconds']} s")
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
        print(f"FAILED: {failures} requests got a 5xx, a connection error or were not sent in time", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
