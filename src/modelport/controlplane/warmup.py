"""Warm-up at load: run the model before it is marked ready.

The first calls into a session pay for lazy allocation and kernel
selection; running them at load keeps that off the first real request.
With Triton's ``model_warmup`` configured, its samples run (``zero_data``,
``random_data`` or ``input_data_file`` read from ``<model>/warmup/``);
without it, zero data at batch size 1 and at each preferred batch size,
for models whose inputs have fixed sizes. In configured samples, dimensions
of -1 become 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelport.config.model import ModelConfig
from modelport.dataplane.runtime.files import resolves_below
from modelport.errors import ModelLoadError, first_line
from modelport.types import CONFIG_TYPES, DTYPES, Array, ModelSignature, TensorSpec

_MAX_WARMUP_ELEMENTS = 1 << 24


def _zeros(datatype: str, shape: tuple[int, ...]) -> Array:
    if datatype == "BYTES":
        out = np.empty(shape, dtype=object)
        out.fill(b"")
        return out
    return np.zeros(shape, dtype=DTYPES[datatype])


def _random(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> Array:
    if datatype == "BYTES":
        return _zeros(datatype, shape)
    dt = DTYPES[datatype]
    if dt.kind == "f":
        return rng.random(shape, dtype=np.float64).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(dt)
    return rng.integers(0, 100, shape).astype(dt)


def _shape(spec_dims: list[int], batch: int | None) -> tuple[int, ...]:
    dims = tuple(1 if d < 0 else d for d in spec_dims)
    shape = (batch, *dims) if batch is not None else dims
    if int(np.prod(shape)) > _MAX_WARMUP_ELEMENTS:
        raise ModelLoadError(f"model_warmup: sample shape {list(shape)} is too large")
    return shape


def _default_samples(config: ModelConfig, signature: ModelSignature) -> list[dict[str, Array]]:
    batching = config.max_batch_size > 0
    sizes = [1]
    if batching and config.dynamic_batching is not None:
        sizes += [s for s in config.dynamic_batching.preferred_batch_size if s > 1]
    samples = []
    for size in sorted(set(sizes)):
        sample: dict[str, Array] = {}
        for spec in signature.inputs:
            dims = list(spec.shape[1:] if batching else spec.shape)
            sample[spec.name] = _zeros(spec.datatype, _shape(dims, size if batching else None))
        samples.append(sample)
    return samples


def _configured(
    entry: dict[str, Any], config: ModelConfig, model_dir: Path, i: int
) -> tuple[dict[str, Array], int]:
    where = f"model_warmup[{i}]"
    batch = int(entry.get("batch_size", 1) or 1)
    inputs = entry.get("inputs") or {}
    if not isinstance(inputs, dict):
        raise ModelLoadError(f"{where}.inputs: expected a mapping of input name to sample")
    rng = np.random.default_rng(i)
    sample: dict[str, Array] = {}
    for name, spec in inputs.items():
        datatype = CONFIG_TYPES.get(str(spec.get("data_type", "")))
        if datatype is None:
            raise ModelLoadError(
                f"{where}.inputs.{name}.data_type: unknown {spec.get('data_type')!r}"
            )
        dims = [int(d) for d in spec.get("dims", [])]
        shape = _shape(dims, batch if config.max_batch_size > 0 else None)
        if spec.get("random_data"):
            sample[name] = _random(datatype, shape, rng)
        elif spec.get("input_data_file"):
            field = f"{where}.inputs.{name}.input_data_file"
            sample[name] = _from_file(
                model_dir, str(spec["input_data_file"]), datatype, shape, field
            )
        else:
            sample[name] = _zeros(datatype, shape)
    return sample, max(1, int(entry.get("count", 1) or 1))


def _from_file(
    model_dir: Path, filename: str, datatype: str, shape: tuple[int, ...], field: str
) -> Array:
    """A sample's values from ``<model>/warmup/<filename>``, in row-major order.

    Only the bytes the sample needs are read, so a file of any size (or a
    pipe, or a device) costs no more than the sample itself; what follows
    them is ignored, as it always was. A file too short for the sample is
    refused with the sizes, not left to fail in a reshape.
    """
    # The name may come from a load request: confined to the warm-up folder,
    # as Triton reads it, not merely to the model.
    path = model_dir / "warmup" / filename
    if not resolves_below(path, model_dir / "warmup"):
        raise ModelLoadError(f"{field}: outside the model")
    if datatype == "BYTES":
        raise ModelLoadError(f"{field}: not supported for BYTES inputs; use zero_data")
    dtype = DTYPES[datatype]
    need = int(np.prod(shape)) * dtype.itemsize
    try:
        with path.open("rb") as f:
            data = f.read(need)
    except OSError as exc:
        raise ModelLoadError(f"{field}: cannot read warmup/{filename}: {exc.strerror}") from None
    if len(data) < need:
        raise ModelLoadError(
            f"{field}: warmup/{filename} holds {len(data)} bytes; the sample needs {need}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def warm_up(predict: Any, config: ModelConfig, signature: ModelSignature, model_dir: Path) -> int:
    """Run the warm-up samples through ``predict``; returns how many calls ran."""
    outputs = [s.name for s in signature.outputs]
    runs: list[tuple[dict[str, Array], int]]
    if config.model_warmup:
        runs = [_configured(e, config, model_dir, i) for i, e in enumerate(config.model_warmup)]
    elif all(_fixed(s, config) for s in signature.inputs):
        runs = [(s, 1) for s in _default_samples(config, signature)]
    else:
        return 0
    calls = 0
    for sample, count in runs:
        for _ in range(count):
            try:
                predict(sample, outputs)
            except Exception as exc:
                raise ModelLoadError(f"warm-up failed: {first_line(exc)}") from None
            calls += 1
    return calls


def _fixed(spec: TensorSpec, config: ModelConfig) -> bool:
    """Whether zero data can be made for an input without guessing sizes."""
    dims = spec.shape[1:] if config.max_batch_size > 0 else spec.shape
    return all(d > 0 for d in dims)
