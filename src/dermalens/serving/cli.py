"""`dermalens serve`: the web app and JSON API under waitress (never Flask's debug server)."""
from __future__ import annotations

import logging
import os
import signal

from ..classes import RESEARCH_DISCLAIMER
from ..inference.runtimes import RUNTIME_HELP, RUNTIMES

log = logging.getLogger(__name__)


def default_torch_threads() -> int:
    # Requests take turns on the model, so one inference may use a few cores;
    # more than 4 rarely helps a single small image on CPU.
    return max(1, min(4, os.cpu_count() or 1))


def cmd_serve(args) -> int:
    import torch

    from .app import create_app
    from .server import make_server, server_url

    torch.set_num_threads(args.torch_threads)
    app = create_app(args.model, max_upload_mb=args.max_upload_mb, max_image_pixels=int(args.max_megapixels * 1e6),
                     runtime=args.runtime, threads=args.torch_threads)
    server = make_server(app, host=args.host, port=args.port, threads=args.threads)
    model = app.extensions["dermalens"].info
    print(f"dermalens: serving {model['name']} ({model['checkpoint']}, predictions by {model['inference_engine']}) "
          f"on {server_url(server, args.host)}/ "
          f"with {args.threads} threads; Ctrl+C stops it.\n{RESEARCH_DISCLAIMER}", flush=True)
    # SIGTERM (service managers, containers) stops it like Ctrl+C: waitress finishes, exit status 0.
    signal.signal(signal.SIGTERM, stop_on_signal)
    try:
        server.run()
    finally:
        server.close()
    return 0


def stop_on_signal(signum, frame):
    raise SystemExit(0)


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser("serve", help="web page and JSON API for a trained model (waitress)")
    p.add_argument("--model", required=True, help="checkpoint (.ckpt)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--threads", type=int, default=4, help="waitress worker threads (default 4)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted (default 10 MB)")
    p.add_argument("--max-megapixels", type=float, default=40.0,
                   help="largest image accepted, in megapixels (default 40)")
    p.add_argument("--torch-threads", type=int, default=default_torch_threads(),
                   help="CPU threads for one inference, in every runtime (default: min(4, cores))")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto", help=RUNTIME_HELP)
    p.set_defaults(func=cmd_serve)
