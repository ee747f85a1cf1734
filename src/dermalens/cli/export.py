"""`dermalens export`: a checkpoint -> an ONNX model checked against PyTorch (optionally int8)."""
from __future__ import annotations

from pathlib import Path

from ..inference.settings import (
    DEFAULT_CALIBRATION_COUNT,
    DEFAULT_EXPORTER,
    DEFAULT_OPSET,
    DEFAULT_PARITY_COUNT,
    DEFAULT_QUANTIZE_METHOD,
    EXPORTERS,
    PARITY_TOLERANCE,
    QUANTIZE_METHODS,
)
from .common import positive_int


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write an ONNX model (checked against PyTorch) for fast CPU inference",
        epilog="example: dermalens export runs/x/checkpoints/best.ckpt --quantize int8",
        description="Export a checkpoint to ONNX with its classes and preprocessing as metadata. The export is "
                    "compared with PyTorch on real images and only kept if the probabilities agree.")
    p.add_argument("checkpoint", help="dermalens checkpoint (.ckpt), model package folder, or a package on the "
                                      "Hugging Face Hub: hf-hub:user/repo[@revision]")
    p.add_argument("--out", help="output file (default: <checkpoint stem>.onnx beside it, which `dermalens predict "
                                 "--model <ckpt>` then uses; .int8.onnx with --quantize int8; for a Hub package, "
                                 "<repo>.onnx in the current folder); an existing file is replaced only when it "
                                 "is an ONNX model")
    p.add_argument("--web", metavar="OUT", help="instead: write a static web page into the folder OUT that runs the "
                   "model in the browser (ONNX Runtime Web; the photo never leaves the device; open OUT/index.html "
                   "from disk or put OUT on any static host)")
    p.add_argument("--quantize", choices=["int8"], help="write an int8 model (accuracy changes: measure it)")
    p.add_argument("--quantize-method", choices=QUANTIZE_METHODS,
                   help="static: activation ranges calibrated on training images (default)")
    p.add_argument("--calibration-images", nargs="+", metavar="PATH",
                   help="images/folders/globs for int8 calibration (default: the run's training split)")
    p.add_argument("--calibration-count", type=positive_int,
                   help=f"at most this many int8 calibration images (default {DEFAULT_CALIBRATION_COUNT})")
    opsets = ", ".join(f"{opset} with {name}" for name, opset in DEFAULT_OPSET.items())
    p.add_argument("--opset", type=int, help=f"ONNX opset (default {opsets})")
    p.add_argument("--exporter", choices=EXPORTERS,
                   help=f"torch.onnx exporter: torch.export-based ({DEFAULT_EXPORTER}, the default) or the legacy "
                        f"TorchScript one")
    p.add_argument("--parity-images", nargs="+", metavar="PATH",
                   help="images/folders/globs for the parity check (default: the HAM10000 sample images)")
    p.add_argument("--parity-count", type=positive_int,
                   help=f"at most this many parity images (default {DEFAULT_PARITY_COUNT})")
    p.add_argument("--tolerance", type=float,
                   help=f"max |p_onnx - p_torch| accepted (default {PARITY_TOLERANCE:g})")
    p.set_defaults(func=run)


# What shapes the .onnx file, by argparse dest: none of it applies to --web, which makes its own export. Their
# argparse default is None so that a given option can be told from an unset one (--web ignored them silently).
ONNX_FILE_OPTIONS = {"out": "--out", "quantize": "--quantize", "quantize_method": "--quantize-method",
                     "calibration_images": "--calibration-images", "calibration_count": "--calibration-count",
                     "opset": "--opset", "exporter": "--exporter", "parity_images": "--parity-images",
                     "parity_count": "--parity-count", "tolerance": "--tolerance"}
ONNX_FILE_DEFAULTS = {"quantize_method": DEFAULT_QUANTIZE_METHOD, "calibration_count": DEFAULT_CALIBRATION_COUNT,
                      "exporter": DEFAULT_EXPORTER, "parity_count": DEFAULT_PARITY_COUNT,
                      "tolerance": PARITY_TOLERANCE}


def check_web_options(args) -> None:
    """ValueError naming the .onnx-file options given with --web, before any work."""
    given = [option for dest, option in ONNX_FILE_OPTIONS.items() if getattr(args, dest) is not None]
    if given:
        raise ValueError(f"--web writes a page with its own export; {', '.join(given)} "
                         f"{'applies' if len(given) == 1 else 'apply'} only to an .onnx file: leave "
                         f"{'it' if len(given) == 1 else 'them'} out, or write the .onnx file without --web")


def run(args) -> int:
    from ..inference.export import default_output
    from ..inference.export_job import describe_export, export_with_calibration
    from ..models.hub_reference import is_hub_reference, parse_hub_reference, resolve_model_reference

    if args.web:
        check_web_options(args)   # before the Hub reference below sets --out
    for dest, default in ONNX_FILE_DEFAULTS.items():
        if getattr(args, dest) is None:
            setattr(args, dest, default)
    if is_hub_reference(args.checkpoint) and not args.out:   # never write into the Hugging Face cache
        # Named as beside a local checkpoint (`<stem>.onnx`, `<stem>.int8.onnx`), the repository name as the stem.
        repo_name = parse_hub_reference(args.checkpoint).repo_id.rsplit("/", 1)[-1]
        args.out = str(default_output(Path(repo_name), args.quantize))
    args.checkpoint = resolve_model_reference(args.checkpoint)
    if args.web:
        return write_page(args)
    result = export_with_calibration(
        args.checkpoint, args.out, quantize=args.quantize, quantize_method=args.quantize_method,
        calibration_patterns=args.calibration_images, calibration_count=args.calibration_count,
        exporter=args.exporter, opset=args.opset, parity_images=args.parity_images,
        parity_count=args.parity_count, tolerance=args.tolerance)
    print(describe_export(result))
    return 0


def write_page(args) -> int:
    from ..classes import RESEARCH_DISCLAIMER
    from ..inference.web_export import write_web_bundle

    bundle = write_web_bundle(args.checkpoint, args.web)
    print(f"wrote {bundle.path}/index.html: {bundle.record['model']['name']} in the browser "
          f"({bundle.served_bytes / 1e6:.1f} MB loaded from a static host, {bundle.file_bytes / 1e6:.1f} MB from "
          f"disk; ONNX Runtime Web {bundle.record['runtime']['version']})")
    print(f"open it from disk, or serve it: python3 -m http.server --directory {bundle.path} 8000")
    print(RESEARCH_DISCLAIMER)
    return 0
