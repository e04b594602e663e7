"""Backends behind the Runtime interface, chosen by the config's ``backend``."""

from __future__ import annotations

from modelport.dataplane.runtime.base import Runtime, RuntimeLoader
from modelport.errors import ModelLoadError


def runtime_loader(backend: str) -> RuntimeLoader:
    """The loader for a backend name; imported lazily so extras stay optional."""
    if backend == "onnxruntime":
        from modelport.dataplane.runtime.onnx import load_onnx

        return load_onnx
    raise ModelLoadError(f"backend {backend!r} is not served (served: onnxruntime)")


__all__ = ["Runtime", "RuntimeLoader", "runtime_loader"]
