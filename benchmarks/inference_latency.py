"""Inference latency and throughput on CPU: eager PyTorch, channels-last, ONNX Runtime fp32 and int8.

    python benchmarks/inference_latency.py                       # random-weight EfficientNet-B3 + CBAM, 300 px
    python benchmarks/inference_latency.py --model runs/x/checkpoints/best.ckpt

Batch 1: p50/p95 latency of the model call on a preprocessed real image.
Batch 32: images per second. App path: what the web app does per request
(decode a 600x450 JPEG, resize, normalise, infer), through `OnnxPredictor`
and the PyTorch `Predictor`. All variants are timed round-robin in one
process, so the ratios hold even on a busy machine; absolute numbers need a
quiet one. Random weights time the same as trained ones (the int8 model is
then calibrated on the sample images; its accuracy is measured by
quantization_accuracy.py, not here).
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    benchmark_image,
    interleaved_timings,
    logits_call,
    openvino_sessions,
    percentile_ms,
    publish_result,
)
from dermalens import __version__  # noqa: E402
from dermalens.classes import CLASS_CODES  # noqa: E402
from dermalens.data.transforms import preprocess_image  # noqa: E402
from dermalens.inference.export import checkpoint_metadata, default_sample_images, export_model  # noqa: E402
from dermalens.inference.onnx_predictor import INPUT_NAME, LOGITS_NAME, OnnxPredictor, available_cores, create_session  # noqa: E402
from dermalens.inference.prediction import read_rgb_image  # noqa: E402
from dermalens.inference.predictor import Predictor  # noqa: E402
from dermalens.models.checkpoint import load_classifier  # noqa: E402
from dermalens.models.classifier import ModelConfig, create_classifier  # noqa: E402

LATENCY_TARGET_RATIO = 0.4     # exported model vs eager PyTorch, batch 1, same run
APP_P50_TARGET_MS = 80.0


def build_model(args) -> tuple[torch.nn.Module, dict, str]:
    if args.model:
        checkpoint = Path(args.model)
        model, meta = load_classifier(checkpoint)
        return model, checkpoint_metadata(checkpoint, meta), f"checkpoint {checkpoint}"
    config = ModelConfig(backbone=args.backbone, image_size=args.image_size, cbam=not args.no_cbam, pretrained="none")
    torch.manual_seed(0)
    model = create_classifier(config, load_pretrained=False).eval()
    meta = {"classes": list(CLASS_CODES), "preprocessing": model.preprocessing, "temperature": 1.0,
            "version": __version__, "backbone": config.backbone, "model_config": asdict(config)}
    return model, meta, f"random-weight {config.backbone}{' + CBAM' if config.cbam else ''} at {config.image_size}px"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model choice `build_model` takes, shared by the latency benchmarks."""
    parser.add_argument("--model", help="checkpoint (default: random weights, see --backbone)")
    parser.add_argument("--backbone", default="efficientnet_b3")
    parser.add_argument("--image-size", type=int, default=300)
    parser.add_argument("--no-cbam", action="store_true")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch and ORT threads (default: all cores)")
    parser.add_argument("--rounds", type=int, default=48, help="timed batch-1 calls per variant and repeat")
    parser.add_argument("--repeats", type=int, default=3,
                        help="batch-1 measurements one after another; each gives its own ONNX/eager ratio")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batch-rounds", type=int, default=3, help="timed batch-32 calls per variant")
    parser.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"])
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--openvino", action="store_true",
                        help="also time the same .onnx file in OpenVINO (f32 and bf16), in a round of its own")
    parser.add_argument("--image", help="a 600x450 JPEG for the app path (default: first HAM10000 sample)")
    parser.add_argument("--out", help="result JSON (default benchmarks/results/inference_latency.json)")
    args = parser.parse_args(argv)

    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    model, meta, description = build_model(args)
    pre = meta["preprocessing"]
    samples = default_sample_images()
    image, image_source = benchmark_image(args.image)
    x1 = preprocess_image(image, pre).unsqueeze(0)
    xb = x1.repeat(args.batch, 1, 1, 1)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)

    with tempfile.TemporaryDirectory(prefix="dermalens-bench-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp32 = export_model(model, meta, Path(tmp) / "model.onnx", exporter=args.exporter, parity_count=4)
        int8 = None
        if not args.no_int8:
            calibration = [read_rgb_image(p) for p in samples[:16]] or None
            int8 = export_model(model, meta, Path(tmp) / "model.int8.onnx", exporter=args.exporter, parity_count=4,
                                quantize="int8", calibration_images=calibration)
        sessions = {"onnxruntime": create_session(fp32.path, threads)}
        if int8:
            sessions["onnxruntime_int8"] = create_session(int8.path, threads)
        onnx_predictor = OnnxPredictor(sessions["onnxruntime"], fp32.metadata)
        torch_predictor = Predictor(model, meta)

        def variants(batch: torch.Tensor) -> dict:
            x_np = batch.numpy()
            x_cl = batch.contiguous(memory_format=torch.channels_last)
            out = {"eager": lambda: model(batch), "channels_last": lambda: model_cl(x_cl)}
            for name, session in sessions.items():
                out[name] = logits_call(session, x_np)
            return out

        # The app path is timed in the same round-robin as the bare model
        # calls, so its overhead over "onnxruntime" is visible directly.
        source = Path(image_source) if Path(image_source).is_file() else image  # a file: decoding is timed too
        app_variants = {"app_onnxruntime": lambda: onnx_predictor.predict([source]),
                        "app_eager": lambda: torch_predictor.predict([source])}
        with torch.inference_mode():
            # Repeats a minute or so apart: on a shared VM the host's state
            # changes (see docs/performance.md), and one ratio hides that.
            repeats = [interleaved_timings({**variants(x1), **app_variants}, args.rounds)
                       for _ in range(max(1, args.repeats))]
            single = {name: np.concatenate([r[name] for r in repeats]) for name in repeats[0]}
            batched = interleaved_timings(variants(xb), args.batch_rounds, warmup=0, block=args.batch_rounds,
                                          block_warmup=1)
            app = {name: single.pop(name) for name in app_variants}
            openvino_round = None
            if args.openvino:
                # A separate round against eager and ORT again: OpenVINO's
                # thread pool must not disturb the main table.
                openvino = openvino_sessions(fp32.path, threads)

                def openvino_variants(batch: torch.Tensor) -> dict:
                    base = variants(batch)
                    return {"eager": base["eager"], "onnxruntime": base["onnxruntime"],
                            **{name: logits_call(session, batch.numpy()) for name, session in openvino.items()}}

                openvino_round = (interleaved_timings(openvino_variants(x1), args.rounds),
                                  interleaved_timings(openvino_variants(xb), args.batch_rounds, warmup=0,
                                                      block=args.batch_rounds, block_warmup=1))
                reference = sessions["onnxruntime"].run([LOGITS_NAME], {INPUT_NAME: x1.numpy()})[0]
                # Relative to the logits' own size: a random-weight model's logits are tiny.
                openvino_drift = {
                    name: float(np.abs(session.run([LOGITS_NAME], {INPUT_NAME: x1.numpy()})[0] - reference).max()
                                / np.abs(reference).max()) for name, session in openvino.items()}

    eager_p50 = np.percentile(single["eager"], 50)
    rows = []
    for name, seconds in single.items():
        rows.append({"variant": name, "batch1_p50_ms": percentile_ms(seconds, 50),
                     "batch1_p95_ms": percentile_ms(seconds, 95),
                     "vs_eager_p50": round(float(np.percentile(seconds, 50) / eager_p50), 3),
                     f"batch{args.batch}_img_per_s": round(args.batch / float(np.median(batched[name])), 2)})
    for name, seconds in app.items():
        rows.append({"variant": name + " (decode+resize+infer)", "batch1_p50_ms": percentile_ms(seconds, 50),
                     "batch1_p95_ms": percentile_ms(seconds, 95),
                     "vs_eager_p50": round(float(np.percentile(seconds, 50) / np.percentile(app["app_eager"], 50)), 3),
                     f"batch{args.batch}_img_per_s": None})
    if openvino_round:
        ov_single, ov_batched = openvino_round
        ov_eager = np.percentile(ov_single["eager"], 50)
        for name in ov_single:
            if name.startswith("openvino"):
                rows.append({"variant": name + " (own round)", "batch1_p50_ms": percentile_ms(ov_single[name], 50),
                             "batch1_p95_ms": percentile_ms(ov_single[name], 95),
                             "vs_eager_p50": round(float(np.percentile(ov_single[name], 50) / ov_eager), 3),
                             f"batch{args.batch}_img_per_s": round(args.batch / float(np.median(ov_batched[name])),
                                                                   2)})
    by_name = {row["variant"].split(" ")[0]: row for row in rows}
    onnx_ratio = by_name["onnxruntime"]["vs_eager_p50"]
    app_p50 = by_name["app_onnxruntime"]["batch1_p50_ms"]
    notes = [
        f"model: {description}; {threads} threads; ONNX via {args.exporter} exporter, "
        f"parity max |dp| {fp32.parity.max_abs_diff:.1e}",
        f"onnxruntime / eager at batch 1 (p50): {onnx_ratio:.2f} (target <= {LATENCY_TARGET_RATIO}); per repeat: "
        + ", ".join(f"{np.median(r['onnxruntime']) / np.median(r['eager']):.2f} "
                    f"({np.median(r['onnxruntime']) * 1e3:.1f} / {np.median(r['eager']) * 1e3:.1f} ms)"
                    for r in repeats),
        f"app path p50 with onnxruntime: {app_p50:.1f} ms for {image.shape[1]}x{image.shape[0]} "
        f"(target <= {APP_P50_TARGET_MS:.0f} ms)",
    ]
    if openvino_round:
        notes.append("OpenVINO round: " + ", ".join(
            f"{name} {np.median(t) * 1e3:.1f} ms ({np.median(t) / ov_eager:.2f}x eager)"
            for name, t in ov_single.items()) + "; max |logit - onnxruntime's| / max |logit| on one image: " + ", ".join(
            f"{name} {drift:.1e}" for name, drift in openvino_drift.items()))
    if int8:
        notes.append(f"int8: {int8.quantization['method']}, top class agrees with PyTorch on "
                     f"{int8.int8_parity.top1_agreement:.0%} of {int8.int8_parity.n_images} sample images")
    settings = {"model": description, "threads": threads, "rounds": args.rounds, "repeats": len(repeats), "batch": args.batch,
                "batch_rounds": args.batch_rounds, "exporter": args.exporter, "opset": fp32.opset, "openvino": args.openvino,
                "image": image_source}
    return publish_result("inference_latency", rows, settings, notes, args.out)


if __name__ == "__main__":
    main()
