"""What this machine offers an optimizer: CPU instruction sets, cores, GPUs, runtimes.

INT8 pays off on a CPU with VNNI (AVX-512 VNNI or AVX-VNNI) or AMX, whose
instructions multiply-accumulate 8-bit integers in one step; without them
ONNX Runtime's INT8 kernels may be slower than FP32. The detection is read
once, from ``/proc/cpuinfo`` where it exists, and passed down as a frozen
value so the choices that depend on it are pure functions tests can feed.

BF16 likewise pays only where the CPU multiplies bfloat16 natively (AMX-BF16,
AVX-512 BF16); OpenVINO is the runtime here that uses those units, so
whether it is installed is part of the same value.
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
    openvino: str = ""
    """OpenVINO's version and devices ("2026.4.1 (CPU)") when it imports, else empty."""

    @property
    def int8_fast(self) -> bool:
        """Whether the CPU has an 8-bit dot-product unit (VNNI or AMX)."""
        return any(f in self.features for f in ("AVX-512 VNNI", "AVX-VNNI", "AMX-INT8", "AMX"))

    @property
    def bf16_fast(self) -> bool:
        """Whether the CPU multiplies bfloat16 natively (AMX-BF16 or AVX-512 BF16)."""
        return any(f in self.features for f in ("AVX-512 BF16", "AMX-BF16"))

    def describe(self) -> str:
        features = ", ".join(self.features) or "no AVX2 or newer"
        gpus = ", ".join(self.gpus) or "none"
        return (
            f"CPU: {self.cpu_model or 'unknown'}, {self.cores} cores ({features}); "
            f"GPUs: {gpus}; ONNX Runtime providers: {', '.join(self.providers)}; "
            f"OpenVINO: {self.openvino or 'not installed'}"
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


def _openvino() -> str:
    """OpenVINO's version and the devices it sees, or empty when it is not installed.

    A broken installation counts as absent: the optimizer then skips its
    candidates instead of failing the whole run.
    """
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return ""
    try:
        import openvino as ov

        version = str(ov.get_version()).split("-", 1)[0]
        devices = ", ".join(ov.Core().available_devices)
    except Exception:
        return ""
    return f"{version} ({devices or 'no devices'})"


def detect_hardware(cpuinfo: Path = CPUINFO) -> Hardware:
    """Read this machine's CPU, cores, GPUs, ONNX Runtime providers and OpenVINO."""
    import onnxruntime as ort

    try:
        model, features = parse_cpuinfo(cpuinfo.read_text(errors="replace"))
    except OSError:
        model, features = "", ()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    providers = tuple(p for p in ort.get_available_providers() if p != "AzureExecutionProvider")
    return Hardware(model, max(1, cores or 1), features, providers, _gpus(), _openvino())
