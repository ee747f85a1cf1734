"""The names of what can run a model, for `load_predictor` and the `--runtime` option of `predict` and `serve`.

Kept free of heavy imports so the command line can list them without loading torch.
"""
RUNTIMES = ("auto", "pytorch", "onnxruntime", "openvino", "openvino-bf16")
RUNTIME_HELP = ("what runs the model (default auto: ONNX Runtime on the export beside the checkpoint when there is "
                "an up-to-date one, else on an export made once into the per-user cache; PyTorch when ONNX Runtime "
                "is missing or the export fails its parity check, said in one log line; openvino / openvino-bf16 need `pip install 'dermalens[openvino]'`; bf16 is faster "
                "and changes a few predictions, see docs/performance.md)")


class OnnxModelError(ValueError):
    """An .onnx file that is missing, unreadable, or not a dermalens export (or a runtime that cannot run it)."""
