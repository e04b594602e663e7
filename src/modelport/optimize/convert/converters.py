"""One converter per framework: a loaded source version → an ONNX graph.

Each converter names the graph's inputs as the source serves them and says
which graph output computes each served output (``Converted.outputs``);
``graph.fit_signature`` then makes names, types and shapes match exactly.
Frameworks and converter libraries are imported here, inside the function
that needs them, so ``modelport convert`` on one framework never imports
another.

Where the object to convert comes from: the scikit-learn estimator is taken
from the runtime that loaded it (so a pickle's code runs once and skops'
trust checks are the server's); XGBoost, LightGBM and PyTorch files are read
again with the framework's public loaders, after the runtime has already
checked and loaded the same file.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelport.config.model import ModelConfig
from modelport.errors import first_line
from modelport.optimize.convert.errors import ConversionFailed
from modelport.optimize.convert.source import Source
from modelport.types import ModelSignature, TensorSpec


@dataclass
class Converted:
    """A converter's graph and, per served output, the graph output that computes it."""

    model: Any  # onnx.ModelProto
    outputs: dict[str, str] = field(default_factory=dict)


def _failed(framework: str, exc: BaseException) -> ConversionFailed:
    return ConversionFailed(
        f"{framework} could not convert the model: {type(exc).__name__}: "
        f"{first_line(exc, limit=300)}"
    )


def _model_file(version_dir: Path, config: ModelConfig, candidates: tuple[str, ...]) -> Path:
    """The file the runtime loaded: ``default_model_filename``, else the first present."""
    if config.default_model_filename:
        return version_dir / config.default_model_filename
    for name in candidates:
        if (version_dir / name).is_file():
            return version_dir / name
    return version_dir / candidates[0]


def _dims(spec: TensorSpec) -> list[int | None]:
    """A converter library's shape: None where the size is open."""
    return [d if d >= 0 else None for d in spec.shape]


# ------------------------------------------------------------------ scikit-learn

#: The served output kinds scikit-learn's runtime names, and skl2onnx's graph outputs.
_SKLEARN_FIRST = ("label", "predictions", "output")


def _sklearn_output(name: str, method: str | None, graph_outputs: list[str]) -> str:
    """The skl2onnx output computing a served output.

    skl2onnx names a classifier's outputs ``label`` and ``probabilities``
    and puts a regressor's or transformer's single result first; the served
    name is the kind (label, probabilities, predictions, output) unless
    ``modelport.method`` chose one method, whose result may be renamed.
    """
    kind = {"predict_proba": "probabilities", "transform": "output"}.get(method or "", name)
    if method == "predict" or kind in _SKLEARN_FIRST:
        return graph_outputs[0]
    if kind == "probabilities" and "probabilities" in graph_outputs:
        return "probabilities"
    if kind == "probabilities" and len(graph_outputs) > 1:
        return graph_outputs[1]
    raise ConversionFailed(
        f"the converted graph has no output for {name!r} (it has {', '.join(graph_outputs)})"
    )


def _sklearn_steps(model: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every estimator of a (nested) pipeline with where it sits, outermost first.

    The path names each container's step: ``step 'prep' (ColumnTransformer) >
    transformer 'city' (OneHotEncoder)``.
    """
    here = f"{path} > " if path else ""
    children: list[tuple[str, str, Any]] = []
    if hasattr(model, "steps") and isinstance(model.steps, list):
        children = [("step", name, step) for name, step in model.steps]
    elif isinstance(getattr(model, "transformers_", None), list):
        children = [("transformer", entry[0], entry[1]) for entry in model.transformers_]
    elif isinstance(getattr(model, "transformer_list", None), list):
        children = [("transformer", name, step) for name, step in model.transformer_list]
    for kind, name, step in children:
        if isinstance(step, str) or step is None:  # "passthrough", "drop"
            continue
        where = f"{here}{kind} {name!r} ({type(step).__name__})"
        yield where, step
        yield from _sklearn_steps(step, where)


def _sklearn_culprit(estimator: Any, exc: BaseException) -> str | None:
    """Which step skl2onnx could not convert: one it has no converter for, or one the
    error names by class; None when neither tells."""
    try:
        from skl2onnx._supported_operators import sklearn_operator_name_map

        known: Any = sklearn_operator_name_map
    except ImportError:  # a private module: without it, only the error's text tells
        known = None
    steps = list(_sklearn_steps(estimator))
    if known is not None:
        for where, step in steps:
            if type(step) not in known:
                return f"{where} has no skl2onnx converter"
    text = str(exc)
    named = [(where, step) for where, step in steps if type(step).__name__ in text]
    if named:
        return named[-1][0]  # the innermost step the error names
    return None


def _sklearn_failed(estimator: Any, exc: BaseException) -> ConversionFailed:
    culprit = _sklearn_culprit(estimator, exc)
    if culprit is None:
        return _failed("skl2onnx", exc)
    return ConversionFailed(
        f"skl2onnx could not convert {culprit}: {type(exc).__name__}: {first_line(exc, limit=300)}"
    )


def _sklearn_inputs(source: Source) -> list[tuple[str, Any]]:
    """skl2onnx's initial types: the one matrix, or one ``[N, 1]`` input per column.

    Columns are named as served, which is how skl2onnx's ColumnTransformer
    finds them: strings are StringTensorType, FP64 DoubleTensorType, FP32
    and FP16 FloatTensorType, integers and BOOL Int64TensorType (fit_signature
    casts the served type to the graph's).
    """
    from skl2onnx.common import data_types as t

    types: dict[str, Callable[[list[int | None]], Any]] = {
        "FP32": t.FloatTensorType,
        "FP64": t.DoubleTensorType,
        "INT64": t.Int64TensorType,
        "BYTES": t.StringTensorType,
    }
    if getattr(source.runtime, "columns", None) is None:
        spec = source.signature.inputs[0]
        # Other numeric inputs reach the graph as float: fit_signature casts them.
        return [(spec.name, types.get(spec.datatype, t.FloatTensorType)(_dims(spec)))]
    columns: list[tuple[str, Any]] = []
    for spec in source.signature.inputs:
        if spec.datatype in types:
            kind = types[spec.datatype]
        elif spec.datatype == "FP16":
            kind = t.FloatTensorType
        else:  # BOOL and the other integer types
            kind = t.Int64TensorType
        columns.append((spec.name, kind(_dims(spec))))
    return columns


def convert_sklearn(source: Source, opset: int | None) -> Converted:
    """scikit-learn estimators and pipelines, with skl2onnx.

    A model served one input per DataFrame column becomes a graph with one
    input per column (string columns as ONNX strings). When skl2onnx cannot
    convert a step, the error names the step and its class.
    """
    from skl2onnx import convert_sklearn as to_onnx
    from sklearn.base import is_classifier

    estimator = getattr(source.runtime, "estimator", None)
    if estimator is None:
        raise ConversionFailed("the scikit-learn runtime holds no estimator to convert")
    options: dict[int, dict[str, Any]] = {}
    final = estimator
    while hasattr(final, "steps") and isinstance(final.steps, list) and final.steps:
        final = final.steps[-1][1]
    for candidate in (estimator, final):
        if is_classifier(candidate):
            # Probabilities as a plain [N, classes] tensor, not a list of maps.
            options[id(candidate)] = {"zipmap": False}
    try:
        model = to_onnx(
            estimator,
            initial_types=_sklearn_inputs(source),
            options=options or None,
            target_opset=opset,
        )
    except Exception as exc:  # skl2onnx raises many types: missing converters, bad options
        raise _sklearn_failed(estimator, exc) from None
    graph_outputs = [o.name for o in model.graph.output]
    method = source.config.modelport.method
    outputs = {
        s.name: _sklearn_output(s.name, method, graph_outputs) for s in source.signature.outputs
    }
    return Converted(model, outputs)


# ------------------------------------------------------------------ boosters

#: Served output → the output onnxmltools gives a tree ensemble.
_BOOSTER_OUTPUTS = {"label": "label", "probabilities": "probabilities", "predictions": "variable"}


def _booster_outputs(signature: ModelSignature, model: Any) -> dict[str, str]:
    graph_outputs = [o.name for o in model.graph.output]
    outputs: dict[str, str] = {}
    for spec in signature.outputs:
        wanted = _BOOSTER_OUTPUTS.get(spec.name, spec.name)
        if wanted not in graph_outputs and spec.name == "predictions" and graph_outputs:
            wanted = graph_outputs[-1]
        if wanted not in graph_outputs:
            raise ConversionFailed(
                f"the converted graph has no output for {spec.name!r} "
                f"(it has {', '.join(graph_outputs)})"
            )
        outputs[spec.name] = wanted
    return outputs


def _feature_type(signature: ModelSignature) -> list[tuple[str, Any]]:
    from onnxmltools.convert.common.data_types import FloatTensorType

    # Tree ensembles in ONNX take float features; other input types are cast
    # to float by fit_signature, as XGBoost itself does.
    spec = signature.inputs[0]
    return [(spec.name, FloatTensorType(_dims(spec)))]


def convert_xgboost(source: Source, opset: int | None) -> Converted:
    """XGBoost Boosters, with onnxmltools; the best iteration only, as the runtime predicts."""
    import xgboost as xgb
    from onnxmltools import convert_xgboost as to_onnx

    from modelport.dataplane.runtime.xgboost import MODEL_FILENAMES

    path = _model_file(source.where.version_dir, source.config, MODEL_FILENAMES)
    # From the bytes, as the runtime loads it: XGBoost then tells JSON from UBJSON itself.
    booster = xgb.Booster(model_file=bytearray(path.read_bytes()))
    best = booster.attr("best_iteration")
    if best is not None and best.isdigit() and int(best) + 1 < booster.num_boosted_rounds():
        booster = booster[: int(best) + 1]
    try:
        model = to_onnx(booster, initial_types=_feature_type(source.signature), target_opset=opset)
    except (
        Exception
    ) as exc:  # onnxmltools raises RuntimeError, KeyError, ... for unknown objectives
        raise _failed("onnxmltools", exc) from None
    return Converted(model, _booster_outputs(source.signature, model))


def convert_lightgbm(source: Source, opset: int | None) -> Converted:
    """LightGBM Boosters, with onnxmltools."""
    import lightgbm as lgb
    from onnxmltools import convert_lightgbm as to_onnx

    from modelport.dataplane.runtime.lightgbm import MODEL_FILENAME

    path = _model_file(source.where.version_dir, source.config, (MODEL_FILENAME,))
    booster = lgb.Booster(model_file=str(path))
    try:
        model = to_onnx(
            booster,
            initial_types=_feature_type(source.signature),
            target_opset=opset,
            zipmap=False,
        )
    except (
        Exception
    ) as exc:  # onnxmltools raises RuntimeError, KeyError, ... for unknown objectives
        raise _failed("onnxmltools", exc) from None
    return Converted(model, _booster_outputs(source.signature, model))


# ------------------------------------------------------------------ PyTorch


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep torch's exporter chatter off stdout, where ``--json`` writes its report.

    The exporter prints progress lines and logs warnings about optional
    operator libraries (torchvision) that say nothing about this model.
    """
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def convert_pytorch(source: Source, opset: int | None) -> Converted:
    """ExportedPrograms with the dynamo exporter; TorchScript with the TorchScript exporter.

    Inputs and outputs are named as served, in the order the runtime feeds
    and reads them.
    """
    from modelport.dataplane.runtime.pytorch import EXPORTED_FILENAME, SCRIPTED_FILENAME

    path = _model_file(
        source.where.version_dir, source.config, (EXPORTED_FILENAME, SCRIPTED_FILENAME)
    )
    names = [s.name for s in source.runtime.native.outputs]
    # As the runtime decides: .pt2 is an ExportedProgram, anything else TorchScript.
    if path.suffix == ".pt2":
        model = _export_program(path, source, opset)
    else:
        model = _export_script(path, source, opset)
    return Converted(model, {n: n for n in names})


def _export_program(path: Path, source: Source, opset: int | None) -> Any:
    """An ExportedProgram keeps the dimensions it was exported with as dynamic."""
    import torch

    native = source.runtime.native
    program = torch.export.load(str(path))
    try:
        with _quiet_exporter():
            exported = torch.onnx.export(
                program,
                (),
                dynamo=True,
                input_names=[s.name for s in native.inputs],
                output_names=[s.name for s in native.outputs],
                opset_version=opset,
                verbose=False,
            )
    except Exception as exc:  # torch's exporter raises its own error types per stage
        raise _failed("torch.onnx.export", exc) from None
    if exported is None:
        raise ConversionFailed("torch.onnx.export returned no ONNX program")
    return exported.model_proto


def _export_script(path: Path, source: Source, opset: int | None) -> Any:
    """A TorchScript module records no shapes: every open dimension is made dynamic.

    The example inputs have the shapes the module takes (config.yaml's
    ``reshape`` when given), with 2 for each open dimension so none is
    mistaken for a constant 1.
    """
    import onnx
    import torch

    from modelport.dataplane.runtime.pytorch import DATATYPES

    native = source.runtime.native
    jit_load: Callable[..., Any] = torch.jit.load  # untyped in torch's stubs
    module = jit_load(str(path), map_location="cpu")
    module.eval()
    reshapes = {t.name: t.reshape.shape for t in source.config.input if t.reshape is not None}
    batched = source.config.max_batch_size > 0
    examples = []
    dynamic: dict[str, dict[int, str]] = {}
    for spec in native.inputs:
        shape = list(spec.shape)
        if spec.name in reshapes:
            shape = ([-1] if batched else []) + list(reshapes[spec.name])
        dynamic[spec.name] = {
            i: ("batch" if i == 0 and batched else f"{spec.name}_{i}")
            for i, d in enumerate(shape)
            if d < 0
        }
        sizes = [2 if d < 0 else d for d in shape]
        examples.append(torch.zeros(sizes, dtype=DATATYPES[spec.datatype]))
    if batched:
        dynamic.update({s.name: {0: "batch"} for s in native.outputs})
    with tempfile.TemporaryDirectory(prefix="modelport-convert-") as scratch:
        exported = Path(scratch) / "model.onnx"
        try:
            with _quiet_exporter():
                torch.onnx.export(
                    module,
                    tuple(examples),
                    exported,
                    dynamo=False,
                    input_names=[s.name for s in native.inputs],
                    output_names=[s.name for s in native.outputs],
                    opset_version=opset,
                    dynamic_axes=dynamic,
                )
        except Exception as exc:  # the TorchScript exporter raises RuntimeError and friends
            raise _failed("torch.onnx.export", exc) from None
        return onnx.load(str(exported))


#: Backend → its converter.
CONVERTERS: dict[str, Callable[[Source, int | None], Converted]] = {
    "sklearn": convert_sklearn,
    "xgboost": convert_xgboost,
    "lightgbm": convert_lightgbm,
    "pytorch": convert_pytorch,
}
