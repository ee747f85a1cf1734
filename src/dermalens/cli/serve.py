"""`dermalens serve`: the web app and JSON API under waitress (never Flask's debug server)."""
from __future__ import annotations

from ..inference.runtimes import RUNTIME_HELP, RUNTIMES
from ..serving.capacity import Limits
from ..serving.launch import (
    DEFAULT_HOST,
    DEFAULT_MAX_MEGAPIXELS,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_PORT,
    default_torch_threads,
)


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser("serve", help="web page and JSON API for a trained model (waitress)",
                              epilog=f"example: dermalens serve --model runs/x/checkpoints/best.ckpt --port {DEFAULT_PORT}")
    p.add_argument("--model", required=True,
                   help="checkpoint (.ckpt; predictions through ONNX Runtime by default, see --runtime), or an "
                        "exported model (.onnx) alone: predictions without PyTorch, no explanations; or a model "
                        "package, also on the Hugging Face Hub: hf-hub:user/repo[@revision]")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--threads", type=int, default=None,
                   help="waitress worker threads (default: the sum of the slots and queues below, so every "
                        "slot and queue place can be taken at once)")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest upload accepted (default {DEFAULT_MAX_UPLOAD_MB:g} MB)")
    p.add_argument("--max-megapixels", type=float, default=DEFAULT_MAX_MEGAPIXELS,
                   help=f"largest image accepted, in megapixels (default {DEFAULT_MAX_MEGAPIXELS:g})")
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
    p.set_defaults(func=run)


def run(args) -> int:
    from ..models.hub_reference import resolve_model_reference
    from ..serving.launch import serve

    args.model = resolve_model_reference(args.model)
    limits = Limits(args.predict_slots, args.predict_queue, args.explain_slots, args.explain_queue,
                    args.queue_timeout, args.explain_timeout)   # a ValueError names the limit: exit status 2
    serve(args.model, host=args.host, port=args.port, threads=args.threads, max_upload_mb=args.max_upload_mb,
          max_megapixels=args.max_megapixels, torch_threads=args.torch_threads, runtime=args.runtime, limits=limits)
    return 0
