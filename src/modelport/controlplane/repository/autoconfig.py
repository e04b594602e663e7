"""Completing a model's configuration from the model itself.

A model without config.yaml is configured from its graph: names, datatypes
and shapes. When every input and output has a dynamic first dimension that
dimension is the batch dimension and ``max_batch_size`` defaults to 64.
When the config does list tensors, they are checked against the graph so a
typo fails at load with the field named, not at the first request.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelport.config.model import ModelConfig, ModelInput, ModelOutput
from modelport.dataplane.runtime import FILES, backend_for
from modelport.errors import ConfigError, ModelLoadError
from modelport.types import CONFIG_TYPES, DATATYPE_TO_CONFIG, ModelSignature, TensorSpec

DEFAULT_MAX_BATCH_SIZE = 64

#: Triton platform names for the backends modelport serves.
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "pytorch": "pytorch_libtorch"}
BACKENDS = {v: k for k, v in PLATFORMS.items()}


def choose_backend(config: ModelConfig, source: str, version_dir: Path) -> ModelConfig:
    """Fill ``backend`` and ``platform``: from each other, else from the model file."""
    backend = config.backend or BACKENDS.get(config.platform, "")
    if not backend:
        if config.platform:
            raise ConfigError(source, "platform", f"{config.platform!r} is not served")
        found = backend_for(version_dir)
        if found is None:
            files = ", ".join(name for name, _ in FILES)
            raise ModelLoadError(f"{version_dir}: no model file (looked for {files})")
        backend = found
    platform = config.platform or PLATFORMS.get(backend, backend)
    return config.model_copy(update={"backend": backend, "platform": platform})


def _batchable(native: ModelSignature) -> bool:
    tensors = [*native.inputs, *native.outputs]
    return bool(tensors) and all(t.shape and t.shape[0] == -1 for t in tensors)


def _check_tensors(
    kind: str,
    declared: Sequence[ModelInput | ModelOutput],
    native: Sequence[TensorSpec],
    batching: bool,
    source: str,
) -> None:
    by_name = {t.name: t for t in native}
    for i, t in enumerate(declared):
        field = f"{kind}[{i}]"
        spec = by_name.get(t.name)
        if spec is None:
            raise ConfigError(
                source, f"{field}.name", f"{t.name!r} is not in the model ({', '.join(by_name)})"
            )
        if CONFIG_TYPES[t.data_type] != spec.datatype:
            raise ConfigError(
                source,
                f"{field}.data_type",
                f"{t.data_type} but the model has {DATATYPE_TO_CONFIG[spec.datatype]}",
            )
        full = ([-1] if batching else []) + list(t.reshape.shape if t.reshape else t.dims)
        if t.reshape is None and (
            len(full) != len(spec.shape)
            or any(n not in (-1, d) and d != -1 for d, n in zip(full, spec.shape, strict=True))
        ):
            raise ConfigError(
                source,
                f"{field}.dims",
                f"{t.dims} (full shape {full}) does not fit the model's shape {list(spec.shape)}",
            )


def complete_config(config: ModelConfig, native: ModelSignature, source: str) -> ModelConfig:
    """Fill what the config leaves out from ``native``; check what it states."""
    update: dict[str, Any] = {}
    batching = config.max_batch_size > 0
    if "max_batch_size" not in config.model_fields_set and _batchable(native):
        update["max_batch_size"] = DEFAULT_MAX_BATCH_SIZE
        batching = True
    cut = 1 if batching else 0
    if not config.input:
        update["input"] = [
            ModelInput(
                name=t.name, data_type=DATATYPE_TO_CONFIG[t.datatype], dims=list(t.shape[cut:])
            )
            for t in native.inputs
        ]
    else:
        _check_tensors("input", config.input, native.inputs, batching, source)
    if not config.output:
        update["output"] = [
            ModelOutput(
                name=t.name, data_type=DATATYPE_TO_CONFIG[t.datatype], dims=list(t.shape[cut:])
            )
            for t in native.outputs
        ]
    else:
        _check_tensors("output", config.output, native.outputs, batching, source)
    if batching and not _batchable(native):
        raise ConfigError(
            source,
            "max_batch_size",
            "the model's tensors do not all have a dynamic first dimension, so it cannot batch; "
            "set max_batch_size: 0",
        )
    return config.model_copy(update=update) if update else config


def signature_of(config: ModelConfig) -> ModelSignature:
    """The shapes clients see: -1 for the batch dimension when the model batches."""
    batch = (-1,) if config.max_batch_size > 0 else ()
    return ModelSignature(
        inputs=tuple(
            TensorSpec(t.name, CONFIG_TYPES[t.data_type], (*batch, *(t.dims))) for t in config.input
        ),
        outputs=tuple(
            TensorSpec(t.name, CONFIG_TYPES[t.data_type], (*batch, *(t.dims)))
            for t in config.output
        ),
        max_batch_size=config.max_batch_size,
    )
