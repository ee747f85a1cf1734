"""Load test of the dermalens web app: N prediction requests, C at a time, on loopback only.

    # against a running server (dermalens serve --model best.ckpt)
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --image lesion.jpg
    # or start `dermalens serve` here, in its own process, and stop it afterwards
    python benchmarks/load_test.py --model runs/demo/checkpoints/best.ckpt --image lesion.jpg
    # do predictions stay fast while SHAP explanations run? (200 predictions, 8 at a time, 2 SHAP clients)
    python benchmarks/load_test.py --model runs/demo/checkpoints/best.ckpt --shap-clients 2
    # the server under real load: 200 x 8 alone, then 10 minutes of 8 prediction clients while one
    # client asks for SHAP and one for Grad-CAM all the time, the server's memory sampled throughout
    python benchmarks/load_test.py --model runs/ham10000_cpu/checkpoints/best.ckpt --requests 200 \
        --concurrency 8 --shap-clients 2 --explain-methods shap gradcam --duration-minutes 10 \
        --output benchmarks/results/load_test_recipe.json

Reports how many answers were 2xx/4xx/5xx (and connection errors), the
exact status codes (503: the server's queue was full) and the p50/p95/p99/max
latency; exits 1 on any 5xx, connection error, or request not sent before
--max-seconds. Bounded: at most --requests requests, each with a --timeout,
the whole run within --max-seconds. Research tool, not a diagnosis: this
measures plumbing, not medical performance.

With --shap-clients N (alias --explain-clients) the predictions run twice:
alone, then while N clients keep asking for explanations (each waits for its
answer, and after a 503/504 for the Retry-After it was given, as a
well-behaved client does). Client i asks for --explain-methods[i % len], e.g.
`--explain-methods shap gradcam` (default shap; --explain-method is the same
option). Their answers are counted apart, per method, with the p50/p95/max
latency of the completed explanations: 503 and 504 (server busy, time limit)
are the server protecting itself and allowed; any other 5xx, and any 5xx for
a prediction, fails the run. It reports the prediction p50/p95 of both runs
and the p95 ratio (the target: at most 3x).

With --duration-minutes X the second run (or the only one, without
explanation clients) is a soak: the C prediction clients keep sending for X
minutes instead of --requests in all (which still sizes the run alone). It
reports the requests, requests/s, p50/p95/p99 over the whole soak and per
minute. With --model (or --server-pid for a running server) the server's
resident memory, its children included, is sampled every --rss-interval
seconds from the warm-up to the end: start, max and end RSS in MB, and
least-squares slopes in MB/min over the second half of the soak (the first
half is warm-up): of the floor (the lowest sample of each 30 s, what the
server comes back to between requests) and of every sample; memory counts
as flat when the floor's slope is below 1 MB/min (process_memory.py says
why the floor). Memory is reported, not a failure.
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
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))  # runs from a plain checkout too
sys.path.insert(0, str(Path(__file__).resolve().parent))   # its sibling modules, as a script

from bench_common import cpu_isa, cpu_model, portable  # noqa: E402
from dermalens.atomic_io import atomic_write_json  # noqa: E402
from dermalens.inference.runtimes import RUNTIME_HELP, RUNTIMES  # noqa: E402
from dermalens.serving.client import post_image, request  # noqa: E402
from dermalens.serving.server import is_loopback  # noqa: E402
from load_clients import ExplainClients, run_load  # noqa: E402
from process_memory import RssSampler  # noqa: E402


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
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="bound on a run of --requests (default 300; a soak lasts --duration-minutes)")
    parser.add_argument("--duration-minutes", type=float,
                        help="soak: the prediction clients keep sending for this long (with explanation clients: "
                             "the run beside them; the run alone still sends --requests)")
    parser.add_argument("--start-timeout", type=float, default=120.0,
                        help="with --model: seconds the server may take to start (default 120)")
    parser.add_argument("--threads", type=int, help="with --model: waitress threads (default: the server's)")
    parser.add_argument("--torch-threads", type=int, help="with --model: torch threads (default: the server's)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto", help="with --model: " + RUNTIME_HELP)
    parser.add_argument("--shap-clients", "--explain-clients", dest="shap_clients", type=int, default=0,
                        help="also run the predictions while this many clients keep asking for explanations "
                             "(default 0: predictions only)")
    parser.add_argument("--explain-methods", "--explain-method", dest="explain_methods", nargs="+",
                        metavar="METHOD",
                        help="what those clients ask for: client i asks for METHOD[i %% count] (default shap)")
    parser.add_argument("--rss-interval", type=float, default=5.0,
                        help="seconds between samples of the server's memory (default 5)")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's process id, to sample its memory")
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
    if args.duration_minutes is not None and not 0 < args.duration_minutes <= 24 * 60:
        parser.error(f"--duration-minutes must be above 0 and at most 1440, not {args.duration_minutes}")
    if not 0.1 <= args.rss_interval <= 600:
        parser.error(f"--rss-interval must be 0.1..600 seconds, not {args.rss_interval}")
    if args.start_timeout <= 0:
        parser.error(f"--start-timeout must be positive, not {args.start_timeout}")
    if args.explain_methods and not args.shap_clients:
        parser.error("--explain-methods needs --shap-clients N: the clients that ask for them")
    args.explain_methods = args.explain_methods or ["shap"]
    if len(args.explain_methods) > max(1, args.shap_clients):   # a method after the last client is never asked
        parser.error(f"--explain-methods names {len(args.explain_methods)} methods but only {args.shap_clients} "
                     "explanation clients would ask: give --shap-clients at least as many")
    if args.image is None or not args.image.is_file():
        parser.error(f"image not found: {args.image} (give --image PATH)")
    if args.url and not is_loopback(urlparse(args.url).hostname or ""):
        parser.error(f"{args.url} is not on this machine: the load test only runs against loopback addresses")
    if args.server_pid and args.model:
        parser.error("--server-pid is for --url: with --model the load test knows the server it starts")

    options = {key: getattr(args, key) for key in ("predict_slots", "predict_queue", "explain_slots", "explain_queue",
                                                  "explain_timeout")}
    server = ServeProcess(args.model, args.threads, args.torch_threads, args.start_timeout, runtime=args.runtime,
                          options=options) if args.model else None
    pid = server.process.pid if server else args.server_pid
    soak_s = args.duration_minutes * 60 if args.duration_minutes else None
    explain_clients = sampler = None
    window = None   # (start, end) of the soak on time.monotonic(): where the memory slope is measured
    try:
        url = (server.url if server else args.url).rstrip("/")
        try:
            health = request(url + "/health", timeout=args.timeout)
        except OSError as error:
            raise SystemExit(f"error: cannot reach {url}/health: {error}") from None
        if health.status != 200:
            raise SystemExit(f"error: {url}/health answered {health.status}: {health.body[:200]!r}")
        model = request(url + "/api/model", timeout=args.timeout).json()
        offered = model.get("explain_methods", [])
        if args.shap_clients and (unknown := [m for m in args.explain_methods if m not in offered]):
            raise SystemExit(f"error: {url} does not explain with {', '.join(unknown)}; it offers: "
                             + (", ".join(offered) or "no explanations (an ONNX model alone)"))
        image = args.image.read_bytes()
        post_image(url + "/api/predict", image, args.image.name, timeout=args.timeout)  # warm-up, not counted
        sampler = RssSampler(pid, args.rss_interval).start() if pid else None
        alone_soak = soak_s if not args.shap_clients else None
        print(f"load test: POST {url}/api/predict "
              f"{f'for {args.duration_minutes} min' if alone_soak else f'{args.requests} times'}, "
              f"{args.concurrency} at a time, "
              f"image {args.image.name} ({len(image) / 1024:.0f} KB), model {model['name']} "
              f"{model['input_size']} px, predicted by {model.get('inference_engine', '?')}")
        started = time.monotonic()
        result = run_load(url, image, args.image.name, args.requests, args.concurrency, args.timeout,
                          args.max_seconds, alone_soak)
        window = (started, time.monotonic()) if alone_soak else None
        report("predictions alone" if args.shap_clients else "predictions", result)
        if args.shap_clients:
            methods = " and ".join(dict.fromkeys(args.explain_methods))
            print(f"again{f' for {args.duration_minutes} min' if soak_s else ''}, while {args.shap_clients} "
                  f"clients keep asking for {methods} explanations")
            # A client waits longer than the server's own explanation time limit, so it gets the 504.
            explain_timeout = max(args.timeout, float(model.get("limits", {}).get("explain_timeout", 0)) + 30)
            with ExplainClients(url, image, args.image.name, args.shap_clients, args.explain_methods,
                                explain_timeout) as explain_clients:
                started = time.monotonic()
                result["with_explanations"] = run_load(url, image, args.image.name, args.requests,
                                                       args.concurrency, args.timeout, args.max_seconds, soak_s)
                window = (started, time.monotonic()) if soak_s else None
            report(f"predictions with {args.shap_clients} {methods} clients", result["with_explanations"])
            result["explain_clients"] = explain_clients.summary()
            report_explanations(result["explain_clients"])
            alone, loaded = result["latency_ms"].get("p95"), result["with_explanations"]["latency_ms"].get("p95")
            if alone and loaded:
                result["p95_ratio"] = round(loaded / alone, 2)
                print(f"prediction p95 with explanations / alone: {result['p95_ratio']}x "
                      f"(target <= 3x: {'met' if result['p95_ratio'] <= 3 else 'missed'})")
    finally:
        if sampler:
            sampler.stop()
        if server:
            server.stop()
    if sampler:
        result["rss"] = sampler.summary(window)
        report_memory(result["rss"], soak=window is not None)

    failures = prediction_failures(result["counts"])
    if "with_explanations" in result:
        failures += prediction_failures(result["with_explanations"]["counts"])
    explain_failures = explain_clients.failures() if explain_clients else 0
    if args.output:
        record = {
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "result": result, "model": {k: model.get(k) for k in ("name", "version", "checkpoint", "input_size",
                                                                   "inference_engine")},
            "machine": {"cpu": cpu_model(), "isa": cpu_isa(), "cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "git_commit": git_commit(), "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(args.output, portable(record))
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
          + "".join(f", {outcome} {n}" for outcome, n in sorted(counts.items()) if not outcome[0].isdigit())
          + f" (503: {result.get('status_codes', {}).get('503', 0)})")
    if latency:
        print(f"  latency ms: p50 {latency['p50']}  p95 {latency['p95']}  p99 {latency['p99']}  max {latency['max']}"
              f"  (mean {latency['mean']})")
    print(f"  throughput: {result['requests_per_second']} requests/s, {result['requests']} requests "
          f"over {result['wall_seconds']} s")
    for minute in result.get("per_minute", []):
        print(f"  minute {minute['minute']}: {minute['requests']} requests, p50 {minute.get('p50')}  "
              f"p95 {minute.get('p95')}  p99 {minute.get('p99')} ms")


def report_explanations(summary: dict) -> None:
    print("explanation answers: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["counts"].items()))
          + " (503/504 with Retry-After: the server protecting its capacity)")
    for method, record in summary["by_method"].items():
        latency = record["latency_ms"]
        print(f"  {method} ({record['clients']} client{'s' * (record['clients'] != 1)}): {record['completed']} "
              f"completed, 503 {record['503']}, 504 {record['504']}"
              + (f"; ms p50 {latency['p50']}  p95 {latency['p95']}  max {latency['max']}" if latency else ""))


def report_memory(rss: dict, soak: bool) -> None:
    if not rss["samples"]:
        print(f"server memory: {rss['note']}")
        return
    floor, where = rss["floor_slope_mb_per_min"], "the soak's" if soak else "the run's"
    verdict = ("too few samples to judge" if floor is None else
               f"{'flat' if rss['flat'] else 'NOT flat'} (threshold {rss['flat_threshold_mb_per_min']} MB/min)")
    print(f"server memory (RSS, pid {rss['pid']} and children, {len(rss['samples'])} samples every "
          f"{rss['interval_s']} s): start {rss['start_mb']} MB, max {rss['max_mb']}, end {rss['end_mb']}; over "
          f"{where} second half: floor {rss['floor_mb']} MB, its slope {floor} MB/min ({verdict}), slope of every "
          f"sample {rss['slope_mb_per_min']} MB/min")


if __name__ == "__main__":
    sys.exit(main())
