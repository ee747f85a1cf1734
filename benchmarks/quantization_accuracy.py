"""What int8 costs in accuracy and gains in speed: fp32 vs int8 ONNX on the DermaMNIST test split.

    python benchmarks/quantization_accuracy.py --model runs/demo-.../checkpoints/best.ckpt --data $DERMALENS_DATA

The checkpoint is exported to fp32 ONNX (checked against PyTorch) and to
int8 (static: activation ranges calibrated on training-split images;
dynamic: weights only), then PyTorch, fp32 and int8 are evaluated on the
2,005 test images (official DermaMNIST split, through
`dermalens.data.prepare.prepare_data` at the checkpoint's image size, no
TTA) and timed (batch 1 latency, batch 32 throughput) in the same run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import interleaved_timings, logits_call, openvino_sessions, percentile_ms, publish_result  # noqa: E402
from dermalens.config import load_config  # noqa: E402
from dermalens.data.prepare import prepare_data  # noqa: E402
from dermalens.data.transforms import preprocess_image  # noqa: E402
from dermalens.evaluation.metrics import compute_classification_metrics  # noqa: E402
from dermalens.inference.export import checkpoint_metadata, export_model  # noqa: E402
from dermalens.inference.onnx_predictor import OnnxPredictor, available_cores, create_session  # noqa: E402
from dermalens.inference.postprocess import calibrated_probabilities  # noqa: E402
from dermalens.inference.predictor import predict_logits  # noqa: E402
from dermalens.models.checkpoint import load_classifier  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
METRICS = ("accuracy", "balanced_accuracy", "auc_macro", "macro_f1")


def dermamnist_config(checkpoint: Path, data: Path, config_file: str | None, image_size: int,
                      overrides: list[str]) -> dict:
    """The run's config (or --config, else defaults), pointed at DermaMNIST at the checkpoint's size."""
    run_config = checkpoint.resolve().parent.parent / "config.yaml"
    source = Path(config_file) if config_file else (run_config if run_config.is_file() else None)
    npz = data / "dermamnist.npz" if data.is_dir() else data
    return load_config(source, [f"model.image_size={image_size}", *overrides],
                       {"data": {"path": str(npz), "format": "dermamnist"}})   # the path as given, not as YAML


def onnx_probabilities(predictor: OnnxPredictor, images: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([predictor.predict_arrays(list(images[i:i + batch])) for i in range(0, len(images), batch)])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="dermalens checkpoint trained at DermaMNIST's classes")
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data"),
                        help="folder holding dermamnist.npz, or the file")
    parser.add_argument("--config", help="config for the data settings (default: the checkpoint's run config)")
    parser.add_argument("--methods", nargs="+", default=["static", "dynamic"], choices=["static", "dynamic"])
    parser.add_argument("--openvino", action="store_true",
                        help="also run the fp32 .onnx file in OpenVINO, f32 and bf16 (reduced precision)")
    parser.add_argument("--calibration-count", type=int, default=256, help="training images for static int8")
    parser.add_argument("--limit", type=int, help="evaluate only the first N test images (smoke runs)")
    parser.add_argument("--rounds", type=int, default=40, help="timed batch-1 calls per variant")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. "
                        "data.cache_dir=/tmp/cache")
    parser.add_argument("--out", help="result JSON (default benchmarks/results/quantization_accuracy.json)")
    args = parser.parse_args(argv)

    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    checkpoint = Path(args.model)
    model, meta = load_classifier(checkpoint)
    pre = meta["preprocessing"]
    config = dermamnist_config(checkpoint, Path(args.data), args.config, pre.image_size, args.set)
    prepared = prepare_data(config, None, progress=False)
    test_rows = np.flatnonzero(prepared.split == "test")[:args.limit]
    train_rows = np.flatnonzero(prepared.split == "train")
    calibration_rows = np.sort(np.random.default_rng(0).choice(train_rows, min(args.calibration_count,
                                                                               len(train_rows)), replace=False))
    images, labels = np.asarray(prepared.images[test_rows]), prepared.labels[test_rows]
    export_meta = checkpoint_metadata(checkpoint, meta)
    temperature = export_meta["temperature"]

    probs, sessions, notes = {}, {}, []
    with tempfile.TemporaryDirectory(prefix="dermalens-quant-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logits = predict_logits(model, images, pre, batch_size=128, progress=False)
        probs["pytorch"] = calibrated_probabilities(logits, temperature)
        fp32 = export_model(model, export_meta, Path(tmp) / "fp32.onnx", exporter=args.exporter, parity_count=8)
        sessions["onnx_fp32"] = create_session(fp32.path, threads)
        for method in args.methods:
            calibration = [np.asarray(prepared.images[r]) for r in calibration_rows] if method == "static" else None
            int8 = export_model(model, export_meta, Path(tmp) / f"int8_{method}.onnx", exporter=args.exporter,
                                parity_count=8, quantize="int8", quantize_method=method,
                                calibration_images=calibration)
            sessions[f"onnx_int8_{method}"] = create_session(int8.path, threads)
            notes.append(f"int8 {method}: {int8.quantization}")
        openvino = openvino_sessions(fp32.path, threads) if args.openvino else {}
        for name, session in {**sessions, **openvino}.items():
            probs[name] = onnx_probabilities(OnnxPredictor(session, fp32.metadata), images)

        x1 = preprocess_image(images[0], pre).unsqueeze(0)
        xb = torch.stack([preprocess_image(img, pre) for img in images[:args.batch]])

        def variants(batch: torch.Tensor, timed_sessions: dict) -> dict:
            out = {"pytorch": lambda: model(batch)}
            for name, session in timed_sessions.items():
                out[name] = logits_call(session, batch.numpy())
            return out

        with torch.inference_mode():
            single = interleaved_timings(variants(x1, sessions), args.rounds)
            fp32_p50_of_round = {}  # the ONNX fp32 p50 each variant is compared with: the one of its own round
            batched = interleaved_timings(variants(xb, sessions), 3, warmup=0, block=3, block_warmup=1)
            if openvino:
                # A round of its own, as in inference_latency.py: OpenVINO's
                # thread pool must not disturb the ONNX Runtime timings. Its
                # latency is relative to ONNX Runtime fp32 timed again here.
                ov_sessions = {"onnx_fp32": sessions["onnx_fp32"], **openvino}
                ov_single = interleaved_timings(variants(x1, ov_sessions), args.rounds)
                ov_batched = interleaved_timings(variants(xb, ov_sessions), 3, warmup=0, block=3, block_warmup=1)
                for name in openvino:
                    single[name], batched[name] = ov_single[name], ov_batched[name]
                    fp32_p50_of_round[name] = np.percentile(ov_single["onnx_fp32"], 50)
                notes.append(f"openvino rows: timed in a round of their own, where onnx_fp32 took "
                             f"{percentile_ms(ov_single['onnx_fp32'], 50)} ms at batch 1 (latency_vs_fp32 is "
                             "relative to that)")

    rows = []
    fp32_p50 = np.percentile(single["onnx_fp32"], 50)
    for name, p in probs.items():
        metrics = compute_classification_metrics(p, labels, n_bootstrap=0)
        rows.append({
            "model": name, **{k: round(metrics[k], 4) if metrics.get(k) is not None else None for k in METRICS},
            "top1_agrees_with_fp32": round(float((p.argmax(1) == probs["onnx_fp32"].argmax(1)).mean()), 4),
            "max_abs_dp_vs_pytorch": float(np.abs(p - probs["pytorch"]).max()),
            "batch1_p50_ms": percentile_ms(single[name], 50),
            "latency_vs_fp32": round(float(np.percentile(single[name], 50) / fp32_p50_of_round.get(name, fp32_p50)),
                                     3),
            f"batch{len(xb)}_img_per_s": round(len(xb) / float(np.median(batched[name])), 1),
        })
    base = next(r for r in rows if r["model"] == "onnx_fp32")
    for row in rows:
        if row["model"].startswith(("onnx_int8", "openvino")):
            notes.append(f"{row['model']}: accuracy {row['accuracy'] - base['accuracy']:+.4f}, balanced accuracy "
                         f"{row['balanced_accuracy'] - base['balanced_accuracy']:+.4f}, AUC "
                         f"{row['auc_macro'] - base['auc_macro']:+.4f} vs fp32; batch-1 latency x"
                         f"{row['latency_vs_fp32']:.2f}")
    settings = {"checkpoint": str(checkpoint), "backbone": meta["model_config"]["backbone"],
                "image_size": pre.image_size, "test_images": int(len(test_rows)),
                "calibration_images": int(len(calibration_rows)), "threads": threads, "tta": False,
                "temperature": temperature, "exporter": args.exporter,
                "openvino": args.openvino}
    return publish_result("quantization_accuracy", rows, settings, notes, args.out,
                          header=f"DermaMNIST test split: {len(test_rows)} images; "
                                 f"{meta['model_config']['backbone']} {pre.image_size}px")


if __name__ == "__main__":
    main()
