"""ONNX Runtime backend (``backend: onnxruntime``, file ``model.onnx``).

Honours the settings Triton's ONNX Runtime backend reads: the
``intra_op_thread_count`` / ``inter_op_thread_count`` / ``execution_mode``
parameters, the graph optimization level, and execution accelerators
(``modelport optimize`` writes the same fields, so a tuned version needs
nothing special to serve). An accelerator this machine
lacks falls back to the CPU, and the log says which provider actually runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from modelport.config.model import ModelConfig
from modelport.dataplane.runtime.files import version_file
from modelport.dataplane.runtime.threads import default_threads, int_parameter
from modelport.errors import InvalidRequest, ModelLoadError, first_line
from modelport.types import Array, ModelSignature, TensorSpec

log = logging.getLogger("modelport.runtime.onnx")

MODEL_FILENAME = "model.onnx"

#: ONNX Runtime's type strings -> OIP datatypes.
ORT_TYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}

#: Triton accelerator names -> ONNX Runtime execution providers.
ACCELERATORS: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}

#: Triton's ``execution_mode`` parameter -> ONNX Runtime execution mode (names or 0/1).
EXECUTION_MODES: dict[str, ort.ExecutionMode] = {
    "0": ort.ExecutionMode.ORT_SEQUENTIAL,
    "sequential": ort.ExecutionMode.ORT_SEQUENTIAL,
    "1": ort.ExecutionMode.ORT_PARALLEL,
    "parallel": ort.ExecutionMode.ORT_PARALLEL,
}

#: Triton's ``optimization.graph.level`` -> ONNX Runtime optimization level.
GRAPH_LEVELS: dict[int, ort.GraphOptimizationLevel] = {
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    0: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}


def _providers(config: ModelConfig) -> list[str]:
    """Providers to try in order, always ending with the CPU."""
    wanted: list[str] = []
    gpu = any(g.kind == "KIND_GPU" for g in config.instance_group)
    opt = config.optimization
    if opt is not None and opt.execution_accelerators is not None:
        accel = opt.execution_accelerators
        for a in [*accel.gpu_execution_accelerator, *accel.cpu_execution_accelerator]:
            provider = ACCELERATORS.get(a.name.lower())
            if provider is None:
                raise ModelLoadError(
                    f"optimization.execution_accelerators: unknown accelerator {a.name!r} "
                    f"(known: {', '.join(sorted(ACCELERATORS))})"
                )
            wanted.append(provider)
    if gpu:
        wanted.append("CUDAExecutionProvider")
    available = set(ort.get_available_providers())
    chosen = [p for p in dict.fromkeys(wanted) if p in available]
    missing = [p for p in dict.fromkeys(wanted) if p not in available]
    if missing:
        log.warning(
            "execution providers not available here, falling back",
            extra={"model": config.name, "missing": missing},
        )
    return [*chosen, "CPUExecutionProvider"]


def _session_options(config: ModelConfig, instances: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    intra = int_parameter(config, "intra_op_thread_count", minimum=0)
    inter = int_parameter(config, "inter_op_thread_count", minimum=0)
    if intra is None:
        # One core stays with the event loop that decodes and encodes every
        # request; the rest are split between the instances, so instances x
        # threads never oversubscribes the machine. (Measured on 2 cores: an
        # MLP served 2.3 times the requests with 1 thread than with 2.)
        intra = default_threads(instances)
    opts.intra_op_num_threads = intra
    # Idle intra-op threads spin by default, stealing the loop's core.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if inter is not None:
        opts.inter_op_num_threads = inter
    mode = config.parameter("execution_mode")
    if mode is not None:
        execution_mode = EXECUTION_MODES.get(mode.strip().lower())
        if execution_mode is None:
            raise ModelLoadError(
                f"parameters.execution_mode: expected sequential (0) or parallel (1), got {mode!r}"
            )
        # Parallel runs independent branches of the graph on the inter-op pool;
        # it only pays for graphs with wide, independent branches.
        opts.execution_mode = execution_mode
    level = 0
    opt = config.optimization
    if opt is not None and opt.graph is not None:
        level = opt.graph.level
    if level not in GRAPH_LEVELS:
        raise ModelLoadError(f"optimization.graph.level: expected -1, 0 or 1, got {level}")
    opts.graph_optimization_level = GRAPH_LEVELS[level]
    opts.log_severity_level = 3
    return opts


def _spec(arg: Any) -> TensorSpec:
    datatype = ORT_TYPES.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"tensor {arg.name!r} has type {arg.type}, which is not served")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, datatype, shape)


class OnnxRuntime:
    """One ONNX Runtime inference session."""

    #: Compiled-graph execution, bounded by its input: safe to run on the event loop
    #: for a small model (see scheduling/placement.py).
    inline_safe = True

    def __init__(self, session: ort.InferenceSession, pin_safe: bool = False) -> None:
        self._session = session
        #: Computes on the calling thread alone (one intra-op thread, sequential, CPU):
        #: its instance threads may be pinned to cores (see scheduling/cores.py).
        self.pin_safe = pin_safe
        self._native = ModelSignature(
            inputs=tuple(_spec(a) for a in session.get_inputs()),
            outputs=tuple(_spec(a) for a in session.get_outputs()),
        )
        self._string_inputs = {s.name for s in self._native.inputs if s.datatype == "BYTES"}

    @property
    def native(self) -> ModelSignature:
        return self._native

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def predict(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        feed: dict[str, Array] = dict(inputs)
        for name in self._string_inputs:
            # ONNX Runtime string tensors hold UTF-8 text (str); the wire gives bytes.
            feed[name] = _as_text(name, feed[name])
        results = self._session.run(list(outputs), feed)
        return dict(zip(outputs, results, strict=True))

    def unload(self) -> None:
        del self._session


def _as_text(name: str, array: Array) -> Array:
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, value in enumerate(array.reshape(-1)):
        try:
            flat[i] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError:
            raise InvalidRequest(
                f"input {name!r}: BYTES element {i} is not valid UTF-8; ONNX Runtime "
                "string tensors hold UTF-8 text"
            ) from None
    return out


def load_onnx(version_dir: Path, config: ModelConfig, instances: int) -> OnnxRuntime:
    """Load ``model.onnx`` (or ``default_model_filename``) from a version directory."""
    filename = config.default_model_filename or MODEL_FILENAME
    path = version_file(version_dir, filename)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no {filename} in version directory")
    opts = _session_options(config, instances)
    providers = _providers(config)
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # ONNX Runtime raises its own unexported error types
        raise ModelLoadError(f"{path}: not a loadable ONNX model: {first_line(exc)}") from None
    alone = (
        opts.intra_op_num_threads == 1
        and opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
        and session.get_providers() == ["CPUExecutionProvider"]
    )
    runtime = OnnxRuntime(session, pin_safe=alone)
    log.info(
        "onnx session ready",
        extra={"model": config.name, "path": str(path), "providers": runtime.providers},
    )
    return runtime
