"""`dermalens package`: a run -> a model folder others can load without unpickling (docs/model_package.md)."""
from __future__ import annotations

from ..classes import RESEARCH_DISCLAIMER
from ..inference.settings import DEFAULT_EXPORTER, DEFAULT_PARITY_COUNT, EXPORTERS
from .common import positive_int


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "package", help="write a model folder to hand to others: safetensors, ONNX, config.json, model card, SHA256SUMS",
        epilog="example: dermalens package runs/x --out models/ham10000_cpu",
        description="Package a run's checkpoint as a folder that loads without unpickling: model.safetensors, "
                    "config.json (architecture, preprocessing, classes, calibration, metrics), model.onnx "
                    "(checked against PyTorch), MODEL_CARD.md and SHA256SUMS. predict, explain, serve and export "
                    f"take the folder as --model. {RESEARCH_DISCLAIMER}")
    p.add_argument("run", metavar="RUN", help="run folder (runs/<name>)")
    p.add_argument("--out", help="folder to write (default: RUN/package); built beside it and renamed when complete")
    p.add_argument("--checkpoint", default="best", help="best (default) | last | path to a .ckpt inside this run folder (another run's is refused)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder at --out")
    p.add_argument("--data-licence", metavar="TEXT",
                   help="the training images' licence, for the card and config.json (a folder of your own images: "
                        "dermalens cannot know it; the package's checksums forbid adding it by hand later)")
    p.add_argument("--parity-images", nargs="+", metavar="PATH",
                   help="images/folders/globs for the ONNX parity check (default: the HAM10000 sample images)")
    p.add_argument("--parity-count", type=positive_int, default=DEFAULT_PARITY_COUNT, help="at most this many parity images")
    p.add_argument("--exporter", choices=EXPORTERS, default=DEFAULT_EXPORTER, help="torch.onnx exporter")
    p.add_argument("--push-to-hub", metavar="REPO_ID",
                   help="then upload the folder to this Hugging Face Hub model repository "
                        "(pip install 'dermalens[hub]'; a token from `hf auth login` or HF_TOKEN)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..inference.package_export import onnx_writer
    from ..models.hub import push_to_hub
    from ..models.hub_reference import check_hub_repo_id
    from ..models.package import package_run
    from ..models.package_reader import ONNX_FILE, WEIGHTS_FILE

    if args.data_licence is not None and not args.data_licence.strip():
        raise ValueError("--data-licence is empty: give the licence of the training images")
    if args.push_to_hub:
        check_hub_repo_id(args.push_to_hub)
    folder = package_run(args.run, args.out, checkpoint=args.checkpoint, overwrite=args.overwrite,
                         data_licence=args.data_licence,
                         export_onnx=onnx_writer(args.exporter, args.parity_images, args.parity_count))
    sizes = ", ".join(f"{name} {(folder / name).stat().st_size / 1e6:.1f} MB" for name in (WEIGHTS_FILE, ONNX_FILE))
    print(f"wrote {folder}/: config.json, {sizes}, MODEL_CARD.md, SHA256SUMS\n"
          f"try: dermalens predict --model {folder} <image.jpg>")
    print(RESEARCH_DISCLAIMER)
    if args.push_to_hub:
        commit = push_to_hub(folder, args.push_to_hub, private=args.private or None)
        print(f"uploaded to the Hugging Face Hub: {getattr(commit, 'commit_url', commit)}")
    return 0
