"""What the machine can do fast: bf16 arithmetic on the CPU.

bf16 autocast pays on a CPU only where it has bf16 instructions (AVX512-BF16
or AMX); elsewhere PyTorch emulates it, several times slower than fp32
(measured on a Zen 2 EPYC: a Lite0 training step 17x slower). Training's
`precision: auto` and the PyTorch predictor ask here. No torch import.
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    return platform.machine() in ("x86_64", "AMD64") and any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


def resolve_precision(precision: str | int, accelerator: str, cuda_available: bool, cuda_bf16: bool = True) -> str | int:
    """`auto` -> bf16-mixed where bf16 is fast (a GPU that has it, a CPU with bf16 instructions);
    16-mixed on an older GPU; else 32-true."""
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda_available)
    if str(precision) in ("16-mixed", "16", "16-true") and not on_gpu and accelerator != "tpu":
        # Lightning runs bf16 in its place on a CPU: emulated, many times slower, where the CPU lacks bf16.
        raise ValueError(f"training.precision {precision} is fp16, for GPUs; on a CPU use 32-true, bf16-mixed "
                         f"(fast with bf16 instructions) or auto, which picks")
    if precision != "auto":
        return precision
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda_available):
        return "bf16-mixed" if cuda_bf16 else "16-mixed"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"
