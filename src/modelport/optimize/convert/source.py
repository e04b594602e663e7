"""The version to convert, read the way the server reads it.

``REPO/model/VERSION`` is located, the model's config read and its backend
chosen with the control plane's own functions, and the version loaded
through the data plane's runtime for that backend: the comparison later is
then against exactly what the server would answer, and a config the server
would refuse is refused here with the same message.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from modelport.config.model import ModelConfig
from modelport.controlplane.repository.autoconfig import (
    choose_backend,
    complete_config,
    signature_of,
)
from modelport.controlplane.repository.config_files import read_model_config
from modelport.controlplane.repository.layout import ModelSource, check_model_name, scan_model
from modelport.dataplane.runtime import runtime_loader
from modelport.dataplane.runtime.base import Runtime
from modelport.errors import InvalidRequest
from modelport.optimize.convert.errors import ConversionFailed
from modelport.types import ModelSignature

EXTRA_HINT = "pip install 'modelport[convert]'"

#: Backend → the packages its converter imports (checked before anything loads).
CONVERTER_PACKAGES: dict[str, tuple[str, ...]] = {
    "sklearn": ("skl2onnx",),
    "xgboost": ("onnxmltools",),
    "lightgbm": ("onnxmltools",),
    "pytorch": ("onnxscript",),
}

#: Backends that cannot be converted, and why.
NOT_CONVERTIBLE: dict[str, str] = {
    "onnxruntime": "is already ONNX; there is nothing to convert",
    "python": "runs arbitrary Python code (model.py), which has no ONNX form",
    "mlflow": "wraps an MLflow flavour; convert the underlying model file instead",
}


@dataclass(frozen=True)
class VersionPath:
    """Where a version lives: ``repository / model / version``."""

    repository: Path
    model: str
    version: int

    @property
    def model_dir(self) -> Path:
        return self.repository / self.model

    @property
    def version_dir(self) -> Path:
        return self.model_dir / str(self.version)


@dataclass
class Source:
    """A loaded source version: its completed config, signature and runtime."""

    where: VersionPath
    model: ModelSource
    config: ModelConfig
    origin: str
    signature: ModelSignature
    runtime: Runtime


def locate(path: Path) -> VersionPath:
    """Split ``REPO/model/VERSION`` and check each part, before anything is read."""
    if not path.exists():
        raise ConversionFailed(f"{path}: no such directory (expected REPO/model/VERSION)")
    if not path.is_dir():
        raise ConversionFailed(f"{path}: not a directory (expected a version directory)")
    path = path.resolve()
    if not path.name.isdigit() or int(path.name) < 1:
        raise ConversionFailed(
            f"{path}: not a version directory: its name must be a positive integer "
            "(REPO/model/VERSION)"
        )
    try:
        name = check_model_name(path.parent.name)
    except InvalidRequest as exc:
        raise ConversionFailed(f"{path.parent}: {exc.message}") from None
    return VersionPath(path.parent.parent, name, int(path.name))


def require_converter(backend: str, version_dir: Path) -> None:
    """Refuse an unconvertible backend or a missing converter library, naming the fix."""
    reason = NOT_CONVERTIBLE.get(backend)
    if reason is not None:
        raise ConversionFailed(f"{version_dir}: backend {backend!r} {reason}")
    packages = CONVERTER_PACKAGES.get(backend)
    if packages is None:
        served = ", ".join(sorted(CONVERTER_PACKAGES))
        raise ConversionFailed(
            f"{version_dir}: backend {backend!r} cannot be converted (convertible: {served})"
        )
    for package in packages:
        if importlib.util.find_spec(package) is None:
            raise ConversionFailed(
                f"converting a {backend} model needs the {package!r} package: {EXTRA_HINT}"
            )


def read_config(where: VersionPath) -> tuple[ModelSource, ModelConfig, str]:
    """The model directory as scanned, its config with the backend chosen, and its origin."""
    model = scan_model(where.repository, where.model)
    if model is None or where.version not in model.versions:
        raise ConversionFailed(f"{where.version_dir}: not a version directory of a model")
    if model.problem:
        raise ConversionFailed(model.problem)
    origin = str(model.config_file or model.path)
    config = read_model_config(model)
    config = choose_backend(config, origin, where.version_dir)
    return model, config, origin


def load_source(where: VersionPath, model: ModelSource, config: ModelConfig, origin: str) -> Source:
    """Load the version as the server would (one instance), and complete its config."""
    runtime = runtime_loader(config.backend)(where.version_dir, config, 1)
    try:
        config = complete_config(config, runtime.native, origin)
    except Exception:
        runtime.unload()
        raise
    return Source(where, model, config, origin, signature_of(config), runtime)


def output_version(where: VersionPath, model: ModelSource, requested: int | None) -> int:
    """The new version's number: ``requested``, else one past the highest on disk."""
    if requested is None:
        version = max(model.versions) + 1
        while (where.model_dir / str(version)).exists():  # a stray file of that name
            version += 1
        return version
    if requested < 1:
        raise ConversionFailed(f"--output-version: must be a positive integer, got {requested}")
    target = where.model_dir / str(requested)
    if target.exists():
        raise ConversionFailed(f"{target}: already exists; choose another --output-version")
    return requested
