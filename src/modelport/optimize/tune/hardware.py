"""What this machine offers an optimizer: CPU instruction sets, cores, GPUs, providers.

INT8 pays off on a CPU with VNNI (AVX-512 VNNI or AVX-VNNI) or AMX, whose
instructions multiply-accumulate 8-bit integers in one step; without them
ONNX Runtime's INT8 kernels may be slower than FP32. The detection is read
once, from ``/proc/cpuinfo`` where it exists, and passed down as a frozen
value so the choices that depend on it are pure functions tests can feed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

#: cpuinfo flag → the name people know it by, in the order they are shown.
CPU_FEATURES: dict[str, str] = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "amx_tile": "AMX",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
    "avx512fp16": "AVX-512 FP16",
}


@dataclass(frozen=True)
class Hardware:
    """The machine as the optimizer sees it."""

    cpu_model: str
    cores: int
    features: tuple[str, ...]
    """Names from CPU_FEATURES that the CPU reports, in that table's order."""
    providers: tuple[str, ...]
    """ONNX Runtime execution providers this installation offers."""
    gpus: tuple[str, ...]
    """GPU names (from torch when installed), else empty."""

    @property
    def int8_fast(self) -> bool:
        """Whether the CPU has an 8-bit dot-product unit (VNNI or AMX)."""
        return any(f in self.features for f in ("AVX-512 VNNI", "AVX-VNNI", "AMX-INT8", "AMX"))

    @property
    def bf16_fast(self) -> bool:
        return any(f in self.features for f in ("AVX-512 BF16", "AMX-BF16"))

    def describe(self) -> str:
        features = ", ".join(self.features) or "no AVX2 or newer"
        gpus = ", ".join(self.gpus) or "none"
        return (
            f"CPU: {self.cpu_model or 'unknown'}, {self.cores} cores ({features}); "
            f"GPUs: {gpus}; ONNX Runtime providers: {', '.join(self.providers)}"
        )


def parse_cpuinfo(text: str) -> tuple[str, tuple[str, ...]]:
    """The model name and the known features in ``/proc/cpuinfo`` text (first CPU)."""
    model = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, tuple(name for flag, name in CPU_FEATURES.items() if flag in flags)


def _gpus() -> tuple[str, ...]:
    """GPU names through torch, when it is installed with CUDA; never fails.

    torch takes seconds to import, so it is asked only when an NVIDIA driver is
    present.
    """
    import importlib.util

    if not Path("/proc/driver/nvidia").exists() or importlib.util.find_spec("torch") is None:
        return ()
    try:
        import torch

        if not torch.cuda.is_available():
            return ()
        return tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except Exception:  # a broken driver is "no GPU" to the optimizer
        return ()


def detect_hardware(cpuinfo: Path = CPUINFO) -> Hardware:
    """Read this machine's CPU, cores, GPUs and ONNX Runtime providers."""
    import onnxruntime as ort

    try:
        model, features = parse_cpuinfo(cpuinfo.read_text(errors="replace"))
    except OSError:
        model, features = "", ()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    providers = tuple(p for p in ort.get_available_providers() if p != "AzureExecutionProvider")
    return Hardware(model, max(1, cores or 1), features, providers, _gpus())
