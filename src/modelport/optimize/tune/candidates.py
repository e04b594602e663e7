"""The variants of a model worth timing, each built only where it applies.

Every builder writes one ONNX file into its own directory under a work
directory and returns a Candidate, or returns a Skipped with the reason a
user would want (not applicable, not installed, slow on this hardware).
A builder that raises is reported as failed by the caller; one broken
variant never stops the others.

- graph levels: ONNX Runtime's basic / extended / all rewrites, applied once
  and saved (``SessionOptions.optimized_model_filepath``) so loading skips them;
- INT8 dynamic: weights quantized ahead, activations at run time (MatMul/Gemm
  models; convolutions usually get slower);
- INT8 static (QDQ): activation ranges calibrated on the calibration rows,
  per-tensor and per-channel weights; ``reduce_range`` on CPUs without VNNI,
  whose 16-bit accumulation could otherwise saturate;
- FP16 on a GPU provider only;
- OpenVINO, when it is installed: the FP32 model, BF16 arithmetic on CPUs
  with BF16 units (AMX-BF16, AVX-512 BF16: ONNX Runtime's CPU provider has
  no BF16 kernels, OpenVINO uses those units), and the per-tensor static
  INT8 QDQ model, which OpenVINO runs as INT8. These reuse files built above
  (OpenVINO reads ONNX), so they cost timing only; each is served with the
  openvino backend and its parameters;
- providers and precisions not available here: skipped, with the reason.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from modelport.optimize.tune.hardware import Hardware
from modelport.types import Array

MODEL_FILENAME = "model.onnx"
#: Rows per calibration batch fed to the quantizer.
CALIBRATION_BATCH = 16
#: Ops whose weights INT8 quantization turns into integer arithmetic.
QUANTIZABLE_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})
#: Triton's graph levels, as modelport's ONNX runtime reads them (-1 basic, 1 extended, 0 all).
GRAPH_LEVEL_NAMES: dict[int, str] = {-1: "basic", 1: "extended", 0: "all"}

Progress = Callable[[str, int, int], None]
"""``progress(task, done, total)``: called as calibration batches are fed."""


@dataclass(frozen=True)
class Candidate:
    """A variant to judge and time."""

    name: str
    description: str
    path: Path
    """The model file (ONNX), or the version directory of a native model."""
    backend: str = "onnxruntime"
    graph_level: int = 0
    """Triton's ``optimization.graph.level`` to serve it with."""
    gpu: bool = False
    settings: dict[str, str] = field(default_factory=dict)
    """What the report lists as this candidate's settings."""
    parameters: dict[str, str] = field(default_factory=dict)
    """Backend parameters it is served with, besides the thread count (``HINT_BF16``)."""


@dataclass(frozen=True)
class Skipped:
    """A variant not tried, and why."""

    name: str
    reason: str


def _quiet() -> contextlib.AbstractContextManager[Any]:
    """The quantizer logs and prints advice for every call; the report says what matters."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    stack.callback(root.setLevel, level)
    return stack


def _target(work: Path, name: str) -> Path:
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder / MODEL_FILENAME


def graph_level_candidates(base: Path, work: Path) -> list[Candidate]:
    """The model rewritten at each ONNX Runtime level and saved, ready to load."""
    import onnxruntime as ort

    levels = {
        -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        0: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    out: list[Candidate] = []
    for level, ort_level in levels.items():
        label = GRAPH_LEVEL_NAMES[level]
        target = _target(work, f"fp32-{label}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort_level
        opts.optimized_model_filepath = str(target)
        opts.log_severity_level = 3
        ort.InferenceSession(str(base), sess_options=opts, providers=["CPUExecutionProvider"])
        out.append(
            Candidate(
                f"fp32-{label}",
                f"FP32, ONNX Runtime graph optimizations '{label}' applied and saved",
                target,
                graph_level=level,
                settings={"graph_level": label},
            )
        )
    return out


def quantizable(model: onnx.ModelProto) -> str:
    """Empty when INT8 applies; else why not, in words."""
    ops = {node.op_type for node in model.graph.node}
    if not ops & QUANTIZABLE_OPS:
        found = ", ".join(sorted(ops)[:4]) or "no nodes"
        return f"no MatMul, Gemm or Conv to quantize (the graph holds {found})"
    floats = {onnx.TensorProto.FLOAT}
    if not any(i.type.tensor_type.elem_type in floats for i in model.graph.input):
        return "no FP32 input: INT8 quantization starts from an FP32 graph"
    return ""


def preprocess(base: Path, work: Path) -> Path:
    """Shape inference and the quantizer's recommended clean-up; the base file when it fails.

    Gemm biases are then made one-dimensional (see ``flatten_gemm_biases``).
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = _target(work, "preprocessed")
    source = target
    try:
        # ONNX Runtime's symbolic shape inference leaves a scratch file in the
        # working directory when it gives up; keep it in the work directory.
        with _quiet(), contextlib.chdir(work):
            quant_pre_process(str(base.resolve()), str(target.resolve()))
    except Exception:  # pre-processing is an improvement, never a requirement
        source = base
    try:
        model = onnx.load(str(source))
        if flatten_gemm_biases(model):
            onnx.save(model, str(target))
            return target
    except Exception:  # as above: without it only the per-channel candidate may fail
        pass
    return source


def flatten_gemm_biases(model: onnx.ModelProto) -> int:
    """Reshape Gemm bias initializers of shape [1, N] to [N]; returns how many changed.

    Gemm broadcasts its bias either way, so the answers do not change. The
    quantizer's pre-processing fuses MatMul + Add into a Gemm whose bias
    keeps the Add's [1, N] shape (scikit-learn's MLP graphs have it), and
    per-channel static quantization then indexes that bias one channel at a
    time, expecting [N]: each index yields a row and its range check fails
    with numpy's "truth value of an array is ambiguous".
    """
    from onnx import numpy_helper

    users: dict[str, list[tuple[str, int]]] = {}
    for node in model.graph.node:
        for position, name in enumerate(node.input):
            users.setdefault(name, []).append((node.op_type, position))
    inputs = {i.name for i in model.graph.input}  # an input of that name could replace it
    changed = 0
    for init in model.graph.initializer:
        dims = list(init.dims)
        if len(dims) != 2 or dims[0] != 1 or init.name in inputs:
            continue
        uses = users.get(init.name, [])
        if not uses or any(use != ("Gemm", 2) for use in uses):
            continue
        flat = numpy_helper.from_array(numpy_helper.to_array(init).reshape(dims[1]), init.name)
        init.CopyFrom(flat)
        stale = [v for v in model.graph.value_info if v.name == init.name]
        for info in stale:  # a recorded [1, N] shape would contradict the new one
            model.graph.value_info.remove(info)
        changed += 1
    return changed


def dynamic_int8(pre: Path, work: Path) -> Candidate:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = _target(work, "int8-dynamic")
    with _quiet():
        quantize_dynamic(str(pre), str(target), weight_type=QuantType.QInt8)
    return Candidate(
        "int8-dynamic",
        "INT8 weights, activations quantized at run time",
        target,
        settings={"weights": "int8", "activations": "dynamic"},
    )


class _Reader:
    """Feeds calibration rows in batches and reports progress (a CalibrationDataReader)."""

    def __init__(self, rows: Mapping[str, Array], progress: Progress, task: str) -> None:
        count = int(next(iter(rows.values())).shape[0])
        self._batches: Iterator[dict[str, Array]] = iter(
            [
                {n: a[i : i + CALIBRATION_BATCH] for n, a in rows.items()}
                for i in range(0, count, CALIBRATION_BATCH)
            ]
        )
        self._total = -(-count // CALIBRATION_BATCH)
        self._done = 0
        self._progress = progress
        self._task = task

    def get_next(self) -> dict[str, Array] | None:
        batch = next(self._batches, None)
        if batch is not None:
            self._done += 1
            self._progress(self._task, self._done, self._total)
        return batch

    def rewind(self) -> None:  # part of the reader interface; calibration reads once
        pass


def static_int8(
    pre: Path,
    work: Path,
    calibration: Mapping[str, Array],
    hardware: Hardware,
    per_channel: bool,
    progress: Progress,
) -> Candidate:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    name = "int8-static-per-channel" if per_channel else "int8-static"
    target = _target(work, name)
    reader = _Reader(calibration, progress, f"calibrating {name}")
    CalibrationDataReader.register(_Reader)
    with _quiet():
        quantize_static(
            str(pre),
            str(target),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=not hardware.int8_fast,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    scope = "per-channel" if per_channel else "per-tensor"
    return Candidate(
        name,
        f"INT8 QDQ, {scope} weights, activations calibrated on the calibration rows",
        target,
        settings={"weights": f"int8 {scope}", "activations": "static (calibrated)"},
    )


def fp16(base: Path, work: Path) -> Candidate:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    target = _target(work, "fp16-cuda")
    converted = convert_float_to_float16(onnx.load(str(base)), keep_io_types=True)
    onnx.save(converted, str(target))
    return Candidate(
        "fp16-cuda",
        "FP16 weights and arithmetic on the CUDA provider (inputs and outputs stay FP32)",
        target,
        gpu=True,
        settings={"precision": "fp16", "provider": "CUDA"},
    )


#: How to get OpenVINO, for the reports of machines without it.
OPENVINO_INSTALL = "pip install 'modelport[openvino]', Intel CPUs/GPUs"


def openvino_candidates(base: Path, hardware: Hardware) -> tuple[list[Candidate], list[Skipped]]:
    """The FP32 model on OpenVINO, and with BF16 arithmetic where the CPU has BF16 units.

    OpenVINO reads the ONNX file itself, so nothing is built: precision is a
    compile-time setting (``HINT_BF16``), chosen explicitly in both cases
    because OpenVINO's own default on a BF16 CPU is bf16.
    """
    if not hardware.openvino:
        return [], []
    made = [
        Candidate(
            "openvino-fp32",
            "the FP32 model on OpenVINO, computing in f32",
            base,
            backend="openvino",
            settings={"runtime": "openvino", "precision": "f32"},
            parameters={"HINT_BF16": "NO"},
        )
    ]
    skipped: list[Skipped] = []
    if hardware.bf16_fast:
        made.append(
            Candidate(
                "openvino-bf16",
                "the FP32 model on OpenVINO, computing in bf16 on the CPU's BF16 units "
                "(inputs and outputs stay FP32)",
                base,
                backend="openvino",
                settings={"runtime": "openvino", "precision": "bf16"},
                parameters={"HINT_BF16": "YES"},
            )
        )
    else:
        skipped.append(
            Skipped(
                "openvino-bf16",
                "the CPU has no BF16 units (AMX-BF16 or AVX-512 BF16), so BF16 arithmetic "
                "would not be faster than FP32 here",
            )
        )
    return made, skipped


def openvino_refusal(model: onnx.ModelProto) -> str:
    """Empty when OpenVINO may read the graph; else why it cannot, in words.

    OpenVINO's ONNX reader converts no operator of the ``ai.onnx.ml`` domain,
    which scikit-learn graphs use (Scaler, LinearClassifier, tree ensembles,
    ArrayFeatureExtractor, ...), so loading such a graph always fails.
    """
    ml = sorted({node.op_type for node in model.graph.node if node.domain == "ai.onnx.ml"})
    if not ml:
        return ""
    return (
        "OpenVINO has no conversion for the ai.onnx.ml operators in this graph "
        f"({', '.join(ml)}; scikit-learn's converters emit them), so it cannot load it; "
        "ONNX Runtime runs them"
    )


def openvino_int8(static: Candidate) -> Candidate:
    """The per-tensor static INT8 QDQ model on OpenVINO, which runs its QDQ pairs as INT8."""
    return Candidate(
        "openvino-int8",
        "the INT8 QDQ model (per-tensor weights, calibrated activations) on OpenVINO",
        static.path,
        backend="openvino",
        settings={"runtime": "openvino", **static.settings},
        parameters={"HINT_BF16": "NO"},
    )


def provider_notes(hardware: Hardware, target: str) -> list[Skipped]:
    """Providers and precisions not tried, with the reason and the package that adds them."""
    skipped: list[Skipped] = []
    if not hardware.openvino:
        skipped.append(Skipped("openvino", f"not installed ({OPENVINO_INSTALL})"))
    if "CUDAExecutionProvider" not in hardware.providers:
        why = "no GPU detected" if not hardware.gpus else "onnxruntime here has no CUDA provider"
        skipped.append(Skipped("cuda", f"{why} (pip install onnxruntime-gpu on a GPU machine)"))
    if "TensorrtExecutionProvider" not in hardware.providers:
        skipped.append(
            Skipped("tensorrt", "not available (onnxruntime-gpu with TensorRT libraries, on a GPU)")
        )
    else:
        skipped.append(Skipped("tensorrt", "available, but not yet tried by modelport optimize"))
    if target == "cpu" or "CUDAExecutionProvider" not in hardware.providers:
        skipped.append(
            Skipped(
                "fp16",
                "slow on CPU: ONNX Runtime's x86 CPU provider has few FP16 kernels, so an FP16 "
                "graph runs mostly through inserted casts; tried with --target gpu on CUDA",
            )
        )
    skipped.append(Skipped("bf16", _bf16_note(hardware)))
    return skipped


def _bf16_note(hardware: Hardware) -> str:
    """Why ONNX Runtime gets no BF16 candidate, and whether OpenVINO tries it instead."""
    ort = "ONNX Runtime's CPU provider has no BF16 kernels for these ops"
    units = "BF16 units (AMX-BF16 or AVX-512 BF16)"
    if hardware.bf16_fast and hardware.openvino:
        return f"not on ONNX Runtime ({ort}); tried through OpenVINO instead (openvino-bf16)"
    if hardware.bf16_fast:
        return (
            f"the CPU has {units}, but {ort}; OpenVINO uses them "
            "(pip install 'modelport[openvino]' to try BF16)"
        )
    return f"the CPU has no {units}, so BF16 would not be faster than FP32 ({ort} either)"
