"""`dermalens export`: a checkpoint -> an ONNX model checked against PyTorch (optionally int8)."""
from __future__ import annotations

from pathlib import Path

from ..classes import RESEARCH_DISCLAIMER


def cmd_export(args) -> int:
    from .export import export_checkpoint

    calibration = None
    if args.quantize == "int8" and args.quantize_method == "static":
        calibration = calibration_images(Path(args.checkpoint), args.calibration_images, args.calibration_count)
    result = export_checkpoint(
        args.checkpoint, args.out, exporter=args.exporter, opset=args.opset, parity_images=args.parity_images,
        parity_count=args.parity_count, tolerance=args.tolerance, quantize=args.quantize,
        quantize_method=args.quantize_method, calibration_images=calibration,
    )
    parity = result.parity
    print(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, {result.exporter} exporter, opset {result.opset}, "
          f"dynamic batch, {result.seconds:.0f} s)")
    print(f"parity vs PyTorch on {parity.n_images} {parity.source}: max |dp| = {parity.max_abs_diff:.1e} "
          f"(<= {parity.tolerance:.0e}), top class agrees on {parity.top1_agreement:.0%}")
    if result.int8_parity:
        q = result.int8_parity
        print(f"int8 ({result.quantization['method']}) vs PyTorch: max |dp| = {q.max_abs_diff:.1e}, top class agrees "
              f"on {q.top1_agreement:.0%}; measure accuracy with benchmarks/quantization_accuracy.py")
    meta = result.metadata
    print(f"metadata: {meta['backbone']} {meta['preprocessing'].image_size}px, classes {','.join(meta['classes'])}, "
          f"temperature {meta['temperature']:.3f}, dermalens {meta['version']}")
    print(RESEARCH_DISCLAIMER)
    return 0


def calibration_images(checkpoint: Path, patterns: list[str] | None, count: int):
    """int8 calibration images: given files, else the training split of the run the checkpoint belongs to."""
    import numpy as np

    from .export import expand_image_paths
    from .predictor import read_rgb_image

    if patterns:
        paths = expand_image_paths(patterns)[:count]
        return [read_rgb_image(p) for p in paths]
    run_dir = checkpoint.resolve().parent.parent
    if not (run_dir / "config.yaml").is_file():
        return None  # export warns and calibrates on the parity images
    import warnings

    from ..config import load_config
    from ..data.prepare import prepare_data

    try:
        prepared = prepare_data(load_config(run_dir / "config.yaml"), run_dir, progress=False)
    except (ValueError, OSError) as error:  # data moved, relative path from elsewhere, ...
        warnings.warn(f"cannot read the training data of {run_dir} for int8 calibration ({error}); "
                      f"give --calibration-images", stacklevel=2)
        return None
    rows = np.flatnonzero(prepared.split == "train")
    rows = np.random.default_rng(0).choice(rows, min(count, len(rows)), replace=False)
    return [np.asarray(prepared.images[r]) for r in np.sort(rows)]


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write an ONNX model (checked against PyTorch) for fast CPU inference",
        epilog="example: dermalens export runs/x/checkpoints/best.ckpt --quantize int8",
        description="Export a checkpoint to ONNX with its classes and preprocessing as metadata. The export is "
                    "compared with PyTorch on real images and only kept if the probabilities agree.")
    p.add_argument("checkpoint", help="dermalens checkpoint (.ckpt) or model package folder")
    p.add_argument("--out", help="output file (default: <checkpoint stem>.onnx beside it, which `dermalens predict "
                                 "--model <ckpt>` then uses; .int8.onnx with --quantize int8)")
    p.add_argument("--quantize", choices=["int8"], help="write an int8 model (accuracy changes: measure it)")
    p.add_argument("--quantize-method", choices=["static", "dynamic"], default="static",
                   help="static: activation ranges calibrated on training images (default)")
    p.add_argument("--calibration-images", nargs="+", metavar="PATH",
                   help="images/folders/globs for int8 calibration (default: the run's training split)")
    p.add_argument("--calibration-count", type=int, default=64)
    p.add_argument("--opset", type=int, help="ONNX opset (default 18 with dynamo, 17 with torchscript)")
    p.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo",
                   help="torch.onnx exporter: torch.export-based (default) or the legacy TorchScript one")
    p.add_argument("--parity-images", nargs="+", metavar="PATH",
                   help="images/folders/globs for the parity check (default: the HAM10000 sample images)")
    p.add_argument("--parity-count", type=int, default=16, help="at most this many parity images")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |p_onnx - p_torch| accepted")
    p.set_defaults(func=cmd_export)
