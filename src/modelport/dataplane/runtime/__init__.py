"""Backends behind the Runtime interface, chosen by the config's ``backend``.

When the config names no backend, the file in the version directory decides
(``model.onnx`` → onnxruntime, ``model.skops`` → sklearn, ...). Each
framework is an optional extra, imported only when a model needs it; a
missing one fails that model alone, with the extra to install.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from modelport.dataplane.runtime.base import Runtime, RuntimeLoader
from modelport.errors import ModelLoadError

#: backend → (module, loader function, pip extra that provides the framework)
BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "onnxruntime": ("modelport.dataplane.runtime.onnx", "load_onnx", None),
    "sklearn": ("modelport.dataplane.runtime.sklearn", "load_sklearn", "sklearn"),
    "xgboost": ("modelport.dataplane.runtime.xgboost", "load_xgboost", "xgboost"),
    "lightgbm": ("modelport.dataplane.runtime.lightgbm", "load_lightgbm", "lightgbm"),
    "pytorch": ("modelport.dataplane.runtime.pytorch", "load_pytorch", "torch"),
    "mlflow": ("modelport.dataplane.runtime.mlflow", "load_mlflow", "mlflow"),
    "python": ("modelport.dataplane.runtime.python", "load_python", None),
    "openvino": ("modelport.dataplane.runtime.openvino", "load_openvino", "openvino"),
}

#: A version directory's file → the backend that serves it, in order of preference.
FILES: tuple[tuple[str, str], ...] = (
    # An MLmodel file describes its whole directory, whatever other files
    # (model.skops, model.py ...) the flavour saved beside it.
    ("MLmodel", "mlflow"),
    ("model.onnx", "onnxruntime"),
    # OpenVINO IR; an ONNX file beside it still goes to ONNX Runtime (listed first).
    ("model.xml", "openvino"),
    ("model.skops", "sklearn"),
    ("model.pkl", "sklearn"),
    ("model.joblib", "sklearn"),
    ("model.ubj", "xgboost"),
    ("model.json", "xgboost"),
    ("model.txt", "lightgbm"),
    ("model.pt2", "pytorch"),
    ("model.pt", "pytorch"),
    ("model.py", "python"),
)


def backend_for(version_dir: Path) -> str | None:
    """The backend for the model file found in ``version_dir``, if any."""
    for filename, backend in FILES:
        if (version_dir / filename).is_file():
            return backend
    return None


def runtime_loader(backend: str) -> RuntimeLoader:
    """The loader for a backend name; the framework is imported only now."""
    entry = BACKENDS.get(backend)
    if entry is None:
        raise ModelLoadError(
            f"backend {backend!r} is not served (served: {', '.join(sorted(BACKENDS))})"
        )
    module_name, function, extra = entry
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.startswith("modelport"):
            raise ModelLoadError(f"backend {backend!r} is not available in this build") from None
        hint = f": pip install 'modelport[{extra}]'" if extra else ""
        raise ModelLoadError(f"backend {backend!r} needs the {exc.name!r} package{hint}") from None
    loader: RuntimeLoader = getattr(module, function)
    return loader


__all__ = ["BACKENDS", "FILES", "Runtime", "RuntimeLoader", "backend_for", "runtime_loader"]
