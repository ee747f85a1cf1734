"""`dermalens predict`: class probabilities for image files, folders or glob patterns."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..classes import RESEARCH_DISCLAIMER
from ..inference.output_formats import DEFAULT_OUTPUT_FORMAT, DEFAULT_TOP_K, OUTPUT_FORMATS
from ..inference.runtimes import RUNTIME_HELP, RUNTIMES
from ..inference.settings import DEFAULT_BATCH_SIZE
from .common import check_output_file, positive_int


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser("predict", help="class probabilities for image files, folders or glob patterns",
                              epilog="example: dermalens predict --model runs/x/checkpoints/best.ckpt photos/ "
                                     "-f isic2018 -o submission.csv")
    p.add_argument("--model", required=True, help="checkpoint (.ckpt), model package folder (dermalens package), "
                   "exported model (.onnx), or a package on the Hugging Face Hub: hf-hub:user/repo[@revision]")
    p.add_argument("images", nargs="+", help="image files, folders (their images) or glob patterns ('x/*.jpg')")
    p.add_argument("--top-k", type=positive_int, default=DEFAULT_TOP_K,
                   help=f"classes listed per image, most probable first (table, csv, json; default {DEFAULT_TOP_K}; "
                        f"more than the model has lists them all)")
    p.add_argument("--output-format", "-f", choices=OUTPUT_FORMATS, default=DEFAULT_OUTPUT_FORMAT,
                   help="table (the top classes and the model's decision); csv (long: image,rank,class,name,"
                        "probability,predicted_class,melanoma_flag,caution); json; isic2018 (the ISIC 2018 Task 3 "
                        "submission CSV: image,MEL,NV,BCC,AKIEC,BKL,DF,VASC, the calibrated probabilities, "
                        "whose argmax the ISIC scorer takes: the raw argmax, not the model's decision rule)")
    p.add_argument("--output", "-o", help="write to this file instead of stdout")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                   help="images decoded and predicted together (the model runs them, TTA views included, in "
                        "passes of at most 32 inputs)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average over flipped views (default: as the model was calibrated)")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto", help=RUNTIME_HELP)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..inference.batch_predict import predict_images
    from ..models.hub_reference import resolve_model_reference

    check_output_file(args.output, "--output")   # before the predictions, not after them
    args.model = resolve_model_reference(args.model)
    result = predict_images(args.model, args.images, top_k=args.top_k, output_format=args.output_format,
                            batch_size=args.batch_size, tta=args.tta, runtime=args.runtime,
                            progress=sys.stderr.isatty())
    if args.output:
        from ..atomic_io import atomic_write_text

        atomic_write_text(Path(args.output), result.text)
        print(f"{result.n_predicted} of {result.n_images} images predicted; written to {args.output}. "
              f"{RESEARCH_DISCLAIMER}", file=sys.stderr)
    else:
        sys.stdout.write(result.text)
        if args.output_format in ("csv", "isic2018"):   # the table and JSON carry it; a CSV cannot, so it is said
            print(RESEARCH_DISCLAIMER, file=sys.stderr)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for failure in result.failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if result.failures else 0
