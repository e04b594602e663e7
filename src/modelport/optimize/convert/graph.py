"""Making a converted graph take and give exactly what the source version serves.

Converters name and shape tensors their own way: skl2onnx and onnxmltools
give a classifier's ``label`` as ``[N]`` where the server answers ``[N, 1]``,
LightGBM's probabilities come out float32 where the server answers FP64,
onnxmltools reads float features whatever the declared input type. Clients
must not notice the conversion, so this module rewrites the graph's edges:

- each served input keeps its name, type and rank; when the converter's
  graph wants another type or rank, a Cast and/or Reshape turns one into the
  other inside the graph;
- each served output is produced under its served name by a Cast and/or
  Reshape (or an Identity) appended after the converter's tensor, and the
  graph's outputs become exactly the served ones, in the served order.

Worked example: skl2onnx gives ``label`` int64 ``[N]``. The converter's
tensor is renamed ``label__converted`` everywhere it appears, then
``Reshape(label__converted, [-1, 1]) -> label`` is appended, and the graph
output ``label`` is declared int64 ``[batch, 1]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from modelport.errors import first_line
from modelport.optimize.convert.errors import ConversionFailed
from modelport.types import ModelSignature, TensorSpec

#: OIP datatype → ONNX TensorProto element type number.
ONNX_TYPES: dict[str, int] = {
    "BOOL": 9,
    "UINT8": 2,
    "UINT16": 4,
    "UINT32": 12,
    "UINT64": 13,
    "INT8": 3,
    "INT16": 5,
    "INT32": 6,
    "INT64": 7,
    "FP16": 10,
    "FP32": 1,
    "FP64": 11,
    "BYTES": 8,
}
#: The default-domain opset assumed when a graph imports none (Reshape's shape input needs 5).
MIN_OPSET = 13
BATCH_DIM = "batch"


def onnx_type(spec: TensorSpec) -> int:
    """The ONNX element type of a served tensor; BF16 is refused."""
    elem = ONNX_TYPES.get(spec.datatype)
    if elem is None:
        raise ConversionFailed(
            f"tensor {spec.name!r} is {spec.datatype}, which modelport convert does not handle"
        )
    return elem


class _Names:
    """Every tensor name in a graph, to mint new ones that collide with nothing."""

    def __init__(self, graph: Any) -> None:
        self.used: set[str] = {i.name for i in graph.input} | {o.name for o in graph.output}
        self.used |= {i.name for i in graph.initializer}
        for node in graph.node:
            self.used.update(node.input)
            self.used.update(node.output)

    def fresh(self, base: str) -> str:
        name, n = base, 1
        while name in self.used:
            n += 1
            name = f"{base}{n}"
        self.used.add(name)
        return name


def _rename(graph: Any, old: str, new: str) -> None:
    """Rename a tensor wherever nodes produce or read it (subgraphs aside: converters emit none)."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new


def _shape_of(value_info: Any) -> list[int] | None:
    """A declared shape with -1 for open dimensions; None when no shape is declared."""
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]


def _reshape_target(have: list[int] | None, want: list[int], what: str) -> list[int] | None:
    """The Reshape target that turns a tensor of shape ``have`` into ``want``, or None.

    Equal ranks need no reshape (open dimensions carry over as they are); a
    graph that declares no shape is trusted. Otherwise Reshape must infer at
    most one open dimension (-1), so ``want`` may hold at most one.
    """
    if have is None or len(have) == len(want):
        return None
    if want.count(-1) > 1:
        raise ConversionFailed(
            f"{what}: the converted graph has shape {have}, it is served as {want}, and with "
            "several open dimensions one cannot be reshaped into the other"
        )
    return want


def _served_value_info(spec: TensorSpec, batched: bool) -> Any:
    from onnx import helper

    dims: list[int | str | None] = []
    for i, d in enumerate(spec.shape):
        if d >= 0:
            dims.append(d)
        else:
            dims.append(BATCH_DIM if i == 0 and batched else None)
    return helper.make_tensor_value_info(spec.name, onnx_type(spec), dims)


def _add_shape(graph: Any, names: _Names, base: str, target: list[int]) -> str:
    from onnx import numpy_helper

    name = names.fresh(f"{base}__shape")
    graph.initializer.append(numpy_helper.from_array(np.array(target, dtype=np.int64), name))
    return name


def _bridge(
    graph: Any,
    names: _Names,
    start: str,
    end: str,
    cast_to: int | None,
    target: list[int] | None,
) -> list[Any]:
    """Nodes from ``start`` to ``end``: Cast, then Reshape, or an Identity when neither."""
    from onnx import helper

    nodes: list[Any] = []
    current = start
    steps: list[tuple[str, Any]] = []
    if cast_to is not None:
        steps.append(("Cast", cast_to))
    if target is not None:
        steps.append(("Reshape", target))
    if not steps:
        steps.append(("Identity", None))
    for i, (op, arg) in enumerate(steps):
        out = end if i == len(steps) - 1 else names.fresh(f"{end}__{op.lower()}")
        node_name = names.fresh(f"modelport_{op.lower()}_{end}")
        if op == "Cast":
            nodes.append(helper.make_node("Cast", [current], [out], name=node_name, to=arg))
        elif op == "Reshape":
            shape = _add_shape(graph, names, end, arg)
            nodes.append(helper.make_node("Reshape", [current, shape], [out], name=node_name))
        else:
            nodes.append(helper.make_node("Identity", [current], [out], name=node_name))
        current = out
    return nodes


def _fit_inputs(graph: Any, names: _Names, signature: ModelSignature, batched: bool) -> list[Any]:
    initializers = {i.name for i in graph.initializer}
    graph_inputs = {i.name: i for i in graph.input if i.name not in initializers}
    nodes: list[Any] = []
    for spec in signature.inputs:
        declared = graph_inputs.get(spec.name)
        if declared is None:
            raise ConversionFailed(
                f"the converted graph has no input {spec.name!r} "
                f"(it has {', '.join(graph_inputs) or 'none'})"
            )
        model_type = declared.type.tensor_type.elem_type
        cast = model_type if model_type != onnx_type(spec) else None
        model_shape = _shape_of(declared)
        reshape = None
        if model_shape is not None:
            reshape = _reshape_target(list(spec.shape), model_shape, f"input {spec.name!r}")
        if cast is None and reshape is None:
            continue
        # The served input feeds a bridge; the graph reads the bridge's result.
        inner = names.fresh(f"{spec.name}__model")
        _rename(graph, spec.name, inner)
        nodes.extend(_bridge(graph, names, spec.name, inner, cast, reshape))
        declared.CopyFrom(_served_value_info(spec, batched))
    return nodes


def _fit_outputs(
    graph: Any,
    names: _Names,
    signature: ModelSignature,
    outputs: Mapping[str, str],
    batched: bool,
) -> tuple[list[Any], set[str]]:
    declared = {o.name: o for o in graph.output}
    nodes: list[Any] = []
    renamed: dict[str, str] = {}
    for spec in signature.outputs:
        produced = outputs.get(spec.name)
        if produced is None or produced not in declared:
            have = ", ".join(declared) or "none"
            raise ConversionFailed(f"the converted graph has no output for {spec.name!r} ({have})")
        if produced not in renamed:
            inner = names.fresh(f"{produced}__converted")
            _rename(graph, produced, inner)
            renamed[produced] = inner
        info = declared[produced]
        want_type = onnx_type(spec)
        cast = want_type if info.type.tensor_type.elem_type != want_type else None
        target = _reshape_target(_shape_of(info), list(spec.shape), f"output {spec.name!r}")
        nodes.extend(_bridge(graph, names, renamed[produced], spec.name, cast, target))
    del graph.output[:]
    graph.output.extend(_served_value_info(spec, batched) for spec in signature.outputs)
    return nodes, set(renamed)


def fit_signature(model: Any, signature: ModelSignature, outputs: Mapping[str, str]) -> Any:
    """Rewrite ``model`` in place so its inputs and outputs are ``signature``'s; returns it."""
    import onnx
    from onnx import helper

    graph = model.graph
    names = _Names(graph)
    batched = signature.max_batch_size > 0
    head = _fit_inputs(graph, names, signature, batched)
    tail, stale = _fit_outputs(graph, names, signature, outputs, batched)
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend([*head, *body, *tail])
    # The converter's shapes for tensors now renamed or reshaped no longer hold.
    keep = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("", MIN_OPSET))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = first_line(exc, empty="invalid graph")
        raise ConversionFailed(f"the converted graph is not valid ONNX: {first}") from None
    return model
