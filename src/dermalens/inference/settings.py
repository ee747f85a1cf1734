"""Defaults of predicting and exporting, free of heavy imports so the command line can show them."""
from __future__ import annotations

DEFAULT_BATCH_SIZE = 32          # images decoded and predicted together (the model runs them in passes of 32 views)

# Export
PARITY_TOLERANCE = 1e-4          # max |p_onnx - p_torch| over all images and classes
DEFAULT_PARITY_COUNT = 16
DEFAULT_OPSET = {"dynamo": 18, "torchscript": 17}
EXPORTERS = tuple(DEFAULT_OPSET)
DEFAULT_EXPORTER = "dynamo"      # torch.export-based; torchscript is the legacy exporter
QUANTIZE_METHODS = ("static", "dynamic")
DEFAULT_QUANTIZE_METHOD = "static"   # activation ranges calibrated on images
DEFAULT_CALIBRATION_COUNT = 64
