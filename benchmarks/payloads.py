"""Request bodies for every transport, written once to files the load generators read.

- JSON: ``{"inputs": [{"name", "shape", "datatype", "data": [...]}]}``,
  floats in their shortest float32 form (what ``tritonclient.http`` sends
  for the same values is longer still).
- Binary (Triton's extension): a JSON header whose input carries
  ``binary_data_size`` and asks for every output in binary
  (``binary_data_output``), then the raw little-endian tensor bytes; the
  header's length goes in ``Inference-Header-Content-Length``.
- Raw: the tensor bytes alone (``raw_input_contents`` for gRPC).
- perf_analyzer input data: one sample as perf_analyzer's ``--input-data`` JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from models import SPECS, sample_input

JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class Body:
    """One request body on disk and the headers it needs."""

    path: Path
    content_type: str
    header_length: int | None = None
    """Inference-Header-Content-Length, for binary bodies."""

    @property
    def size(self) -> int:
        return self.path.stat().st_size


@dataclass(frozen=True)
class ModelBodies:
    model: str
    batch: int
    json: Body
    binary: Body
    raw: Path
    shape: tuple[int, ...]
    pa_input_data: Path


def _floats(array: np.ndarray[Any, Any]) -> list[float]:
    # str() of a float32 is its shortest round-tripping decimal form.
    return [float(str(v)) for v in array.ravel()]


def json_body(
    model: str, data: np.ndarray[Any, Any], parameters: dict[str, Any] | None = None
) -> bytes:
    spec = SPECS[model]
    request: dict[str, Any] = {
        "inputs": [
            {
                "name": spec.input_name,
                "shape": list(data.shape),
                "datatype": "FP32",
                "data": _floats(data),
            }
        ]
    }
    if parameters:
        request["parameters"] = parameters
    return json.dumps(request, separators=(",", ":")).encode()


def binary_body(
    model: str, data: np.ndarray[Any, Any], parameters: dict[str, Any] | None = None
) -> tuple[bytes, int]:
    """The body and its JSON header's length."""
    spec = SPECS[model]
    raw = np.ascontiguousarray(data, dtype="<f4").tobytes()
    header_obj: dict[str, Any] = {
        "inputs": [
            {
                "name": spec.input_name,
                "shape": list(data.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "parameters": {"binary_data_output": True, **(parameters or {})},
    }
    header = json.dumps(header_obj, separators=(",", ":")).encode()
    return header + raw, len(header)


def write_bodies(
    folder: Path, model: str, batch: int, parameters: dict[str, Any] | None = None, tag: str = ""
) -> ModelBodies:
    """Write every body for ``model`` at ``batch`` samples per request into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = sample_input(model, batch)
    stem = folder / f"{model}-b{batch}{tag}"
    json_path = stem.with_suffix(".json")
    json_path.write_bytes(json_body(model, data, parameters))
    payload, header_length = binary_body(model, data, parameters)
    bin_path = stem.with_suffix(".bin")
    bin_path.write_bytes(payload)
    raw_path = stem.with_suffix(".raw")
    raw_path.write_bytes(np.ascontiguousarray(data, dtype="<f4").tobytes())
    spec = SPECS[model]
    pa_path = folder / f"{model}-pa-input{tag}.json"
    one = data[0]
    pa_path.write_text(
        json.dumps(
            {"data": [{spec.input_name: {"content": _floats(one), "shape": list(one.shape)}}]}
        )
    )
    return ModelBodies(
        model=model,
        batch=batch,
        json=Body(json_path, JSON_TYPE),
        binary=Body(bin_path, BINARY_TYPE, header_length),
        raw=raw_path,
        shape=tuple(data.shape),
        pa_input_data=pa_path,
    )
