"""`dermalens serve`: the web app and JSON API under waitress (never Flask's debug server)."""
from __future__ import annotations

import logging
import os
import signal
from dataclasses import asdict

from ..classes import RESEARCH_DISCLAIMER
from ..inference.runtimes import RUNTIME_HELP, RUNTIMES
from .capacity import Limits

log = logging.getLogger(__name__)


def default_torch_threads() -> int:
    # A few predictions run at once (--predict-slots), each on a few cores;
    # more than 4 rarely helps a single small image on CPU.
    return max(1, min(4, os.cpu_count() or 1))


def cmd_serve(args) -> int:
    from .app import create_app
    from .server import make_server, server_url
    from .service import is_onnx_file

    try:
        limits = Limits(args.predict_slots, args.predict_queue, args.explain_slots, args.explain_queue,
                        args.queue_timeout, args.explain_timeout)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    if not is_onnx_file(args.model):  # an .onnx file alone is served without PyTorch: never import it
        import torch

        torch.set_num_threads(args.torch_threads)
    app = create_app(args.model, max_upload_mb=args.max_upload_mb, max_image_pixels=int(args.max_megapixels * 1e6),
                     runtime=args.runtime, threads=args.torch_threads, **asdict(limits))
    service = app.extensions["dermalens"]
    threads = args.threads or service.limits.server_threads
    server = make_server(app, host=args.host, port=args.port, threads=threads)
    model = service.info
    explanations = (f"explanations on {args.explain_slots} slot(s), at most {args.explain_timeout:g} s each"
                    if service.predictor is not None else "no explanations (an .onnx model alone)")
    print(f"dermalens: serving {model['name']} ({model['model_file']}, predictions by {model['inference_engine']} "
          f"on {args.predict_slots} slot(s), {explanations}) on {server_url(server, args.host)}/ "
          f"with {threads} threads; Ctrl+C stops it.\n{RESEARCH_DISCLAIMER}", flush=True)
    # SIGTERM (service managers, containers) stops it like Ctrl+C: waitress finishes, exit status 0.
    signal.signal(signal.SIGTERM, stop_on_signal)
    try:
        server.run()
    finally:
        server.close()
        service.close()
    return 0


def stop_on_signal(signum, frame):
    raise SystemExit(0)


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser("serve", help="web page and JSON API for a trained model (waitress)",
                              epilog="example: dermalens serve --model runs/x/checkpoints/best.ckpt --port 8000")
    p.add_argument("--model", required=True,
                   help="checkpoint (.ckpt; predictions through its ONNX export when one is beside it), or an "
                        "exported model (.onnx) alone: predictions without PyTorch, no explanations")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--threads", type=int, default=None,
                   help="waitress worker threads (default: the sum of the slots and queues below, so every "
                        "slot and queue place can be taken at once)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted (default 10 MB)")
    p.add_argument("--max-megapixels", type=float, default=40.0,
                   help="largest image accepted, in megapixels (default 40)")
    p.add_argument("--torch-threads", type=int, default=default_torch_threads(),
                   help="CPU threads for one inference, in every runtime (default: min(4, cores))")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto", help=RUNTIME_HELP)
    p.add_argument("--predict-slots", type=int, default=Limits.predict_slots,
                   help=f"predictions computed at once (default {Limits.predict_slots})")
    p.add_argument("--predict-queue", type=int, default=Limits.predict_queue,
                   help=f"predictions that may wait for a slot; one more is answered 503 with Retry-After "
                        f"(default {Limits.predict_queue})")
    p.add_argument("--explain-slots", type=int, default=Limits.explain_slots,
                   help=f"explanations computed at once, on their own threads: predictions never wait for them "
                        f"(default {Limits.explain_slots})")
    p.add_argument("--explain-queue", type=int, default=Limits.explain_queue,
                   help=f"explanations that may wait for a slot; one more is answered 503 with Retry-After "
                        f"(default {Limits.explain_queue})")
    p.add_argument("--queue-timeout", type=float, default=Limits.queue_timeout,
                   help=f"seconds a prediction waits for a slot before a 503 (default {Limits.queue_timeout:g})")
    p.add_argument("--explain-timeout", type=float, default=Limits.explain_timeout,
                   help=f"seconds a request waits for its explanation, queue included, before a 504; the "
                        f"explanation itself cannot be stopped and finishes in the background "
                        f"(default {Limits.explain_timeout:g})")
    p.set_defaults(func=cmd_serve)
