"""The ONNX step of packaging a run: model.onnx, parity-checked, with no local paths in its metadata."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

from .settings import DEFAULT_EXPORTER, DEFAULT_PARITY_COUNT


def onnx_writer(exporter: str = DEFAULT_EXPORTER, parity_images: Sequence[str] | None = None,
                parity_count: int = DEFAULT_PARITY_COUNT) -> Callable[[Path, Path, Callable], dict]:
    """The `export_onnx` step `models.package.package_run` takes."""

    def write(checkpoint: Path, destination: Path, strip) -> dict:
        from .export import export_checkpoint, write_metadata
        from .onnx_predictor import read_onnx_metadata

        result = export_checkpoint(checkpoint, destination, exporter=exporter, parity_images=parity_images,
                                   parity_count=parity_count)
        # The parity record names the folder its check images came from: keep this machine's folders out.
        write_metadata(destination, strip(read_onnx_metadata(destination)))
        return {"exporter": result.exporter, "opset": result.opset, "parity": asdict(result.parity)}

    return write
