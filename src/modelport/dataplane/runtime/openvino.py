"""OpenVINO backend (``backend: openvino``, file ``model.xml`` or ``model.onnx``).

Intel's CPU runtime, installed with ``pip install 'modelport[openvino]'``.
It reads OpenVINO IR (``model.xml`` beside its ``model.bin``) and ONNX, so a
version written by ``modelport optimize`` for OpenVINO is the same
``model.onnx`` ONNX Runtime serves, with a different ``backend``.

Precision is always set, never left to OpenVINO: on a CPU with BF16 units
(AMX-BF16, AVX-512 BF16) the CPU plugin picks bf16 arithmetic by default
(f16 on CPUs with FP16 units), so the same FP32 model would answer
differently on one machine than on another without anyone asking for it.
Here it computes in f32 unless the config sets ``HINT_BF16: "YES"`` (the
parameter name Triton's OpenVINO backend uses). A CPU without BF16 units
ignores that hint and stays in f32; the log says which precision the
compiled model reports, with a warning when it is not the one asked for.

The parameters mean what they mean to Triton, where each instance compiles
its own copy of the model: ``INFERENCE_NUM_THREADS`` and ``NUM_STREAMS`` are
per instance. modelport compiles once per version and gives OpenVINO
``instances`` times as many streams and threads, so each instance thread
computes on a stream of its own (with one stream for all, concurrent callers
would wait on each other; docs/performance.md).

One infer request must not be used by two callers at once, and the
scheduler's instance threads call ``predict`` concurrently, so each calling
thread gets its own request; outputs are copied out of it before returning,
since the next call on that thread overwrites them. OpenVINO releases the
GIL while it computes.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from modelport.config.model import ModelConfig
from modelport.dataplane.runtime.files import model_file
from modelport.dataplane.runtime.threads import default_threads, int_parameter
from modelport.errors import InferenceFailed, InvalidRequest, ModelLoadError
from modelport.types import Array, ModelSignature, TensorSpec

log = logging.getLogger("modelport.runtime.openvino")

#: Looked for in this order when the config names no ``default_model_filename``.
MODEL_FILENAMES = ("model.xml", "model.onnx")

#: The device every model compiles for; GPUs and NPUs are not served yet.
DEVICE = "CPU"

#: OpenVINO element type names -> OIP datatypes. bf16 tensors have no numpy
#: type, so a model whose inputs or outputs are bf16 is refused at load.
OV_TYPES: dict[str, str] = {
    "boolean": "BOOL",
    "u8": "UINT8",
    "u16": "UINT16",
    "u32": "UINT32",
    "u64": "UINT64",
    "i8": "INT8",
    "i16": "INT16",
    "i32": "INT32",
    "i64": "INT64",
    "f16": "FP16",
    "f32": "FP32",
    "f64": "FP64",
}

PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
YES_NO = {"YES": True, "NO": False}


@functools.cache
def _core() -> Any:
    """One Core per process: it loads the device plugins once, and compiling is thread-safe."""
    return ov.Core()


def reason(exc: BaseException) -> str:
    """The lines of an OpenVINO error a user can act on, on one line.

    OpenVINO prefixes messages with one "Exception from src/...:" line per
    C++ frame and "Check '...' failed at ..." lines; the cause follows them,
    sometimes over several lines: "Model wasn't fully converted." says little
    without the "No conversion rule found for operations: …" line after it.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [
        line
        for line in lines
        if not line.startswith(("Exception from ", "Check '", "FrontEnd API failed"))
    ]
    if useful:
        return " ".join(useful)
    return lines[-1] if lines else type(exc).__name__


def _choice(config: ModelConfig, key: str, allowed: Sequence[str], default: str) -> str:
    raw = config.parameter(key)
    if raw is None:
        return default
    value = raw.strip().upper()
    if value not in allowed:
        raise ModelLoadError(f"parameters.{key}: expected {' or '.join(allowed)}, got {raw!r}")
    return value


def compile_properties(config: ModelConfig, instances: int) -> dict[str, Any]:
    """The CPU plugin's properties for this config, validated; the fields are named on error."""
    instances = max(1, instances)
    threads = int_parameter(config, "INFERENCE_NUM_THREADS")
    streams = int_parameter(config, "NUM_STREAMS")
    hint = _choice(config, "PERFORMANCE_HINT", PERFORMANCE_HINTS, "LATENCY")
    bf16 = YES_NO[_choice(config, "HINT_BF16", tuple(YES_NO), "NO")]
    properties: dict[str, Any] = {
        "INFERENCE_NUM_THREADS": (threads or default_threads(instances)) * instances,
        "PERFORMANCE_HINT": hint,
        "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
    }
    if streams is not None or hint == "LATENCY":
        # THROUGHPUT without NUM_STREAMS lets OpenVINO size the streams itself.
        properties["NUM_STREAMS"] = (streams or 1) * instances
    return properties


def _spec(port: Any) -> TensorSpec:
    name = port.any_name
    type_name = port.element_type.get_type_name()
    datatype = OV_TYPES.get(type_name)
    if datatype is None:
        raise ModelLoadError(f"tensor {name!r} has type {type_name}, which is not served")
    shape = port.partial_shape
    if shape.rank.is_dynamic:
        raise ModelLoadError(f"tensor {name!r} has no fixed number of dimensions")
    dims = tuple(d.get_length() if d.is_static else -1 for d in shape)
    return TensorSpec(name, datatype, dims)


class OpenVinoRuntime:
    """One compiled OpenVINO model, shared by the instance threads."""

    #: Compiled-graph execution, bounded by its input: safe to run on the event loop
    #: for a small model (see scheduling/placement.py).
    inline_safe = True
    #: OpenVINO infers with a thread pool of its own.
    pin_safe = False

    def __init__(self, compiled: Any) -> None:
        self._compiled = compiled
        self._native = ModelSignature(
            inputs=tuple(_spec(p) for p in compiled.inputs),
            outputs=tuple(_spec(p) for p in compiled.outputs),
        )
        self._outputs = {s.name: i for i, s in enumerate(self._native.outputs)}
        self._local = threading.local()

    @property
    def native(self) -> ModelSignature:
        return self._native

    @property
    def precision(self) -> str:
        """The floating-point precision the compiled model computes in ("f32", "bf16")."""
        value = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        return str(value.get_type_name() if hasattr(value, "get_type_name") else value)

    def get_property(self, key: str) -> Any:
        """A property of the compiled model, as OpenVINO reports it."""
        return self._compiled.get_property(key)

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._compiled.create_infer_request()
            self._local.request = request
        return request

    def predict(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        unknown = [n for n in outputs if n not in self._outputs]
        if unknown:
            raise InvalidRequest(f"output {unknown[0]!r} is not in the model")
        feed = {name: np.ascontiguousarray(array) for name, array in inputs.items()}
        try:
            results = self._request().infer(feed, share_inputs=True, share_outputs=True)
        except RuntimeError as exc:
            raise InferenceFailed(f"OpenVINO: {reason(exc)}") from None
        # share_outputs hands out the request's own buffers: copy before the next call.
        return {n: np.array(results[self._outputs[n]], copy=True) for n in outputs}

    def unload(self) -> None:
        # Dropping the thread-local object releases every thread's request with it.
        self._local = threading.local()
        self._compiled = None


def load_openvino(version_dir: Path, config: ModelConfig, instances: int) -> OpenVinoRuntime:
    """Compile ``model.xml`` or ``model.onnx`` (or ``default_model_filename``) for the CPU."""
    properties = compile_properties(config, instances)
    path = model_file(version_dir, config, MODEL_FILENAMES)
    core = _core()
    try:
        model = core.read_model(str(path))
    except Exception as exc:  # OpenVINO raises RuntimeError and its own unexported types
        raise ModelLoadError(f"{path}: not a model OpenVINO can read: {reason(exc)}") from None
    try:
        compiled = core.compile_model(model, DEVICE, properties)
    except Exception as exc:
        raise ModelLoadError(f"{path}: OpenVINO cannot compile it: {reason(exc)}") from None
    runtime = OpenVinoRuntime(compiled)
    asked = properties["INFERENCE_PRECISION_HINT"]
    if runtime.precision != asked:
        log.warning(
            "openvino computes in another precision than configured",
            extra={"model": config.name, "asked": asked, "precision": runtime.precision},
        )
    log.info(
        "openvino model ready",
        extra={
            "model": config.name,
            "path": str(path),
            "precision": runtime.precision,
            "threads": runtime.get_property("INFERENCE_NUM_THREADS"),
            "streams": runtime.get_property("NUM_STREAMS"),
        },
    )
    return runtime
