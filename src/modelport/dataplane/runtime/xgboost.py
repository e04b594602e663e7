"""XGBoost backend (``backend: xgboost``, files ``model.ubj`` or ``model.json``).

Loads a Booster from XGBoost's own model format (UBJSON or JSON, what
``Booster.save_model`` writes); pickles are never read. The signature comes
from the booster itself: the feature count gives the single input
``[-1, n]``, and the objective in its saved configuration decides the
outputs, named as a classifier or regressor would name them:

- ``binary:logistic``: ``probabilities`` FP32 ``[N, 2]`` (1-p, p) and
  ``label`` INT64 ``[N, 1]`` (1 when p > 0.5, as ``XGBClassifier.predict``);
- ``multi:softprob``: ``probabilities`` FP32 ``[N, k]`` and ``label``;
- ``multi:softmax``: ``label``;
- anything else (regression, ranking, survival, multi-target ...):
  ``predictions`` FP32 ``[N, outputs]``, XGBoost's default prediction
  (the raw margin for ranking and ``binary:logitraw``).

XGBoost predicts in float32; config.yaml may list ``probabilities`` or
``predictions`` as TYPE_FP64 to widen them. A model saved after early
stopping answers with its best iteration, as ``XGBClassifier.predict`` does.

Predictions use ``inplace_predict`` on the request's array, so no DMatrix
is built per request (``gblinear``, which lacks it, is the exception).
Thread count: the ``intra_op_thread_count`` parameter, else the cores less
one split between the instances. A ``KIND_GPU`` instance group runs on CUDA
when this build and machine have it; otherwise the CPU runs it, and the log
says which.

XGBoost trusts the sizes and indices in a model file: a truncated or damaged
one can crash the whole server, not just fail its load. So before XGBoost
parses a file it is scanned here (UBJSON structure and bounds; each tree's
node links, feature indices and array sizes; the forest's bookkeeping), and
what fails becomes a load error naming the file.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from modelport.config.model import ModelConfig
from modelport.dataplane.runtime.features import (
    class_outputs,
    empty_output,
    feature_input_spec,
    feature_matrix,
    float_output_types,
)
from modelport.dataplane.runtime.files import model_file
from modelport.dataplane.runtime.threads import thread_budget
from modelport.errors import ModelLoadError, first_line
from modelport.types import DTYPES, Array, ModelSignature, TensorSpec

log = logging.getLogger("modelport.runtime.xgboost")

#: Looked for in this order when ``default_model_filename`` is not set.
MODEL_FILENAMES = ("model.ubj", "model.json")

#: How the booster's raw prediction becomes outputs.
BINARY, SOFTPROB, SOFTMAX, VALUE = "binary", "softprob", "softmax", "value"

#: XGBoost prefixes its errors with "[hh:mm:ss] /source/file.cc:123: ".
_XGB_PREFIX = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")
_LEADING_SPACE = re.compile(rb"\s*")
EXPECTED = (
    "expected an XGBoost model saved with Booster.save_model as UBJSON (model.ubj) "
    "or JSON (model.json)"
)


def _xgb_reason(exc: BaseException) -> str:
    """An XGBoost error's first line without the ``[time] file:line:`` prefix XGBoost adds."""
    return _XGB_PREFIX.sub("", first_line(exc)).strip() or type(exc).__name__


# ------------------------------------------------------------------ file checks


class _Malformed(Exception):
    """The model file would make XGBoost read out of bounds."""


#: UBJSON's fixed-size types: payload size in bytes and big-endian numpy dtype.
#: XGBoost writes a subset, and rejects cleanly the ones it does not read.
_FIXED = {
    ord("i"): (1, "i1"),
    ord("U"): (1, "u1"),
    ord("C"): (1, "u1"),
    ord("I"): (2, ">i2"),
    ord("l"): (4, ">i4"),
    ord("L"): (8, ">i8"),
    ord("d"): (4, ">f4"),
    ord("D"): (8, ">f8"),
}
#: Markers without a payload: null, true, false.
_EMPTY = frozenset(map(ord, "ZTF"))
_MAX_DEPTH = 64
#: A tree's node arrays whose values XGBoost uses as indices without checking.
_INDEX_ARRAYS = ("left_children", "right_children", "parents", "split_indices")
#: A tree's other per-node arrays: one value per node.
_NODE_ARRAYS = ("default_left", "loss_changes", "split_conditions", "split_type", "sum_hessian")
#: What every tree holds, in every XGBoost version that writes JSON.
_REQUIRED = (
    *_INDEX_ARRAYS,
    *("split_conditions", "default_left", "base_weights", "loss_changes", "sum_hessian"),
)
_CATEGORY_ARRAYS = ("categories", "categories_nodes", "categories_segments", "categories_sizes")
#: Fields the scan keeps: a tree's arrays and sizes, a forest's bookkeeping.
_KEPT = frozenset(
    {*_INDEX_ARRAYS, *_NODE_ARRAYS, *_CATEGORY_ARRAYS, "base_weights", "leaf_weights"}
    | {"id", "tree_param", "num_feature", "num_nodes", "size_leaf_vector"}
    | {"tree_info", "iteration_indptr", "gbtree_model_param", "num_trees"}
)
_NO_PARENT = 2**31 - 1  # what XGBoost stores as the root's parent


def _ints(fields: Mapping[str, Any], key: str, where: str) -> Any:
    """A field's values as int64, refusing anything that is not whole numbers."""
    try:
        values = np.asarray(fields.get(key, ())).reshape(-1)
    except (TypeError, ValueError):
        raise _Malformed(f"{where}: {key} is not a list of numbers") from None
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values % 1 == 0):
        return values.astype(np.int64)
    if values.dtype.kind not in "iub":
        raise _Malformed(f"{where}: {key} is not whole numbers")
    return values.astype(np.int64)


def _number(fields: Any, key: str, default: int, where: str) -> int:
    if not isinstance(fields, Mapping) or key not in fields:
        return default
    try:
        return int(fields[key])
    except (TypeError, ValueError):
        raise _Malformed(f"{where}: {key} is not a number") from None


def _check_tree(fields: Mapping[str, Any], index: int) -> int:
    """Every index in a tree points inside it, and every array has its tree's size.

    XGBoost follows these indices and sizes blindly when it loads and
    predicts; one damaged value crashes the process rather than failing the
    load, so they are checked here first. Returns the highest feature the
    tree reads, for the loader to check against the input's width.
    """
    where = f"tree {index}"
    missing = [k for k in _REQUIRED if k not in fields]
    if missing:
        raise _Malformed(f"{where} lacks {', '.join(missing)}")
    if _number(fields, "id", index, where) != index:
        # XGBoost files each tree under its id, unchecked.
        raise _Malformed(f"{where} has id {_number(fields, 'id', index, where)}")
    left, right, parents, split = (_ints(fields, k, where) for k in _INDEX_ARRAYS)
    n = len(left)
    param = fields.get("tree_param")
    if _number(param, "num_nodes", n, where) != n:
        raise _Malformed(f"{where} says {_number(param, 'num_nodes', n, where)} nodes, has {n}")
    num_feature = _number(param, "num_feature", 0, where)
    leaf_size = max(1, _number(param, "size_leaf_vector", 1, where))
    sizes = {k: len(fields[k]) for k in (*_INDEX_ARRAYS, *_NODE_ARRAYS) if k in fields}
    if any(size != n for size in sizes.values()):
        raise _Malformed(f"{where} has node arrays of different lengths {sizes}")
    if "base_weights" in fields and len(fields["base_weights"]) != n * leaf_size:
        raise _Malformed(
            f"{where} has {len(fields['base_weights'])} base_weights, not {n * leaf_size}"
        )
    leaf = left == -1
    inner = ~leaf
    children = np.concatenate([left[inner], right[inner]])
    if np.any((children <= 0) | (children >= n)):
        raise _Malformed(f"{where}: a child index points outside its {n} nodes")
    if not np.all((parents == _NO_PARENT) | (parents == -1) | ((parents >= 0) & (parents < n))):
        raise _Malformed(f"{where}: parents points outside its {n} nodes")
    # Every child names its parent back and the root has none: then the nodes
    # reachable from the root form a tree, with no loop for prediction to follow.
    ids = np.flatnonzero(inner)
    if n and (
        parents[0] not in (_NO_PARENT, -1)
        or np.any(left[inner] == right[inner])
        or np.any(parents[left[inner]] != ids)
        or np.any(parents[right[inner]] != ids)
    ):
        raise _Malformed(f"{where}: its children and parents do not form a tree")
    if np.any(split < 0) or (num_feature > 0 and np.any(split >= num_feature)):
        raise _Malformed(f"{where}: split_indices names a feature outside 0..{num_feature - 1}")
    leaves = int(np.count_nonzero(leaf))
    # A vector-leaf tree keeps each leaf's row of leaf_weights in right_children.
    if leaf_size > 1 and np.any((right[leaf] < 0) | (right[leaf] >= leaves)):
        raise _Malformed(f"{where}: a leaf points outside its {leaves} leaf_weights rows")
    if leaf_size > 1 and len(fields.get("leaf_weights", ())) != leaves * leaf_size:
        raise _Malformed(
            f"{where} has {len(fields.get('leaf_weights', ()))} leaf_weights, "
            f"not {leaves * leaf_size}"
        )
    for key in ("split_type", "default_left"):
        flags = _ints(fields, key, where)
        if np.any((flags != 0) & (flags != 1)):
            raise _Malformed(f"{where}: {key} holds values other than 0 and 1")
    cats = len(fields.get("categories", ()))
    nodes, segments, counts = (_ints(fields, k, where) for k in _CATEGORY_ARRAYS[1:])
    kinds = _ints(fields, "split_type", where)
    categorical = np.flatnonzero(inner & (kinds == 1)) if len(kinds) == n else kinds[:0]
    if len(categorical) and not np.all(np.isin(categorical, nodes)):
        raise _Malformed(f"{where}: a categorical split has no categories")
    if not len(nodes) == len(segments) == len(counts):
        raise _Malformed(f"{where}: categorical split arrays differ in length")
    if np.any(
        (nodes < 0) | (nodes >= n) | (segments < 0) | (counts < 0) | (segments + counts > cats)
    ):
        raise _Malformed(f"{where}: categorical splits point outside the tree or its categories")
    return int(split[inner].max()) if np.any(inner) else -1


def _check_forest(fields: Mapping[str, Any], trees: int) -> int:
    """The forest's bookkeeping agrees with the trees it holds; returns its top group.

    Each tree's group (``tree_info``) picks the output it adds to; XGBoost
    does not check it against the number of outputs, which the learner
    states elsewhere, so the loader compares the two once both are known.
    """
    where = "gbtree model"
    declared = _number(fields.get("gbtree_model_param"), "num_trees", trees, where)
    if declared != trees:
        raise _Malformed(f"{where} says {declared} trees but holds {trees}")
    info = _ints(fields, "tree_info", where)
    if len(info) != trees or np.any(info < 0):
        raise _Malformed(f"{where}: tree_info does not give a group for each of {trees} trees")
    if "iteration_indptr" in fields:
        ptr = _ints(fields, "iteration_indptr", where)
        if len(ptr) == 0 or ptr[0] != 0 or ptr[-1] != trees or np.any(np.diff(ptr) < 0):
            raise _Malformed(f"{where}: iteration_indptr does not partition {trees} trees")
    return int(info.max()) if len(info) else -1


@dataclass
class _Reach:
    """How far a model's trees reach: the highest output group and input feature."""

    group: int = -1
    feature: int = -1


class _UBJScanner:
    """Walks a UBJSON model the way XGBoost's reader does, checking every bound.

    XGBoost's UBJSON reader trusts the lengths in the file: a truncated or
    damaged ``model.ubj`` makes it read past its buffer and crash the whole
    process (seen with xgboost 3.2), taking every other model down with it.
    This scan costs a fraction of the load (typed arrays are skipped by
    length, only the trees' index arrays are read) and turns such a file into
    a load error for that model alone.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.trees = 0
        self.reach = _Reach()

    def need(self, n: int) -> int:
        if n < 0 or self.pos + n > len(self.data):
            raise _Malformed(f"truncated at byte {self.pos} (needs {n} more)")
        start = self.pos
        self.pos += n
        return start

    def byte(self) -> int:
        return self.data[self.need(1)]

    def peek(self) -> int:
        if self.pos >= len(self.data):
            raise _Malformed(f"truncated at byte {self.pos}")
        return self.data[self.pos]

    def expect(self, char: str) -> None:
        at = self.pos
        got = self.byte()
        if got != ord(char):
            raise _Malformed(f"expected {char!r} at byte {at}, found {chr(got)!r}")

    def length(self) -> int:
        """An ``L``-marked int64 length, as XGBoost writes every length."""
        self.expect("L")
        (n,) = struct.unpack_from(">q", self.data, self.need(8))
        if n < 0 or n > len(self.data) - self.pos:
            raise _Malformed(f"length {n} at byte {self.pos - 8} runs past the end of the file")
        return int(n)

    def text(self) -> str:
        start = self.need(self.length())
        return self.data[start : self.pos].decode("utf-8", "replace")

    def value(self, depth: int, keep: bool, role: str = "") -> Any:
        """Skip one value; return it when ``keep`` and it is small or a kept array.

        ``role`` is "trees" for the value of a ``trees`` key and "tree" for
        each element of it: those are checked as trees whatever their keys
        say, so a damaged key cannot hide a tree from the checks.
        """
        if depth > _MAX_DEPTH:
            raise _Malformed(f"nested deeper than {_MAX_DEPTH} levels")
        at = self.pos
        marker = self.byte()
        if role == "tree" and marker != ord("{"):
            raise _Malformed(f"tree {self.trees} at byte {at} is not an object")
        if role == "trees" and marker != ord("["):
            raise _Malformed(f"'trees' at byte {at} is not a list")
        if marker == ord("{"):
            fields: dict[str, Any] = {}
            trees_before = self.trees
            forest = False
            while self.peek() != ord("}"):
                key = self.text()
                forest = forest or key == "trees"
                found = self.value(depth + 1, key in _KEPT, "trees" if key == "trees" else "")
                if found is not None:
                    fields[key] = found
            self.pos += 1
            if role == "tree" or "left_children" in fields:
                self.reach.feature = max(self.reach.feature, _check_tree(fields, self.trees))
                self.trees += 1
            elif forest or "tree_info" in fields:
                top = _check_forest(fields, self.trees - trees_before)
                self.reach.group = max(self.reach.group, top)
            return fields if keep else None
        if marker == ord("["):
            return self.array(depth, keep, role == "trees")
        if marker == ord("S"):
            text = self.text()
            return text if keep else None
        if marker in _FIXED:
            size, dtype = _FIXED[marker]
            start = self.need(size)
            return np.frombuffer(self.data, dtype, 1, start)[0].item() if keep else None
        if marker in _EMPTY:
            return None
        raise _Malformed(f"unknown marker {chr(marker)!r} at byte {at}")

    def array(self, depth: int, keep: bool, trees: bool = False) -> Any:
        marker = self.peek()
        if marker == ord("$"):
            self.pos += 1
            at = self.pos
            kind = self.byte()
            if kind not in _FIXED:
                raise _Malformed(f"typed array of {chr(kind)!r} at byte {at} is not supported")
            self.expect("#")
            n = self.length()
            size, dtype = _FIXED[kind]
            start = self.need(n * size)
            if trees:
                raise _Malformed(f"'trees' at byte {at} holds numbers, not trees")
            return np.frombuffer(self.data, dtype=dtype, count=n, offset=start) if keep else None
        # A kept plain array (XGBoost writes tree_info so) keeps its scalars.
        role = "tree" if trees else ""
        keep = keep and not trees
        items: list[Any] = []
        sized = marker == ord("#")
        remaining = 0
        if sized:
            self.pos += 1
            remaining = self.length()
        while remaining > 0 if sized else self.peek() != ord("]"):
            item = self.value(depth + 1, keep, role)
            if keep:
                items.append(item)
            remaining -= 1
        if not sized:
            self.pos += 1  # the closing ]
        return items if keep else None


def _check_ubjson(data: bytes) -> _Reach:
    """Check a UBJSON model; return how far its trees reach."""
    scanner = _UBJScanner(data)
    scanner.value(0, False)
    return scanner.reach


def _check_json_trees(doc: Any) -> _Reach:
    """The tree and forest checks of the UBJSON scan, on a parsed JSON model."""
    reach = _Reach()
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            trees = node.get("trees")
            if "tree_info" in node or isinstance(trees, list):
                trees = trees if isinstance(trees, list) else []
                for i, tree in enumerate(trees):
                    if not isinstance(tree, dict):
                        raise _Malformed(f"tree {i} is not an object")
                    reach.feature = max(reach.feature, _check_tree(tree, i))
                reach.group = max(reach.group, _check_forest(node, len(trees)))
            stack.extend(v for k, v in node.items() if k != "trees")
        elif isinstance(node, list) and node and isinstance(node[0], dict | list):
            stack.extend(node)
    return reach


# ------------------------------------------------------------------ loading


def _load_booster(path: Path) -> tuple[Any, _Reach]:
    """The Booster in ``path`` and how far its trees reach, or a ModelLoadError.

    The error names the file, says why, and says what was expected.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc.strerror or exc}") from None
    space = _LEADING_SPACE.match(data)
    start = space.end() if space is not None else 0
    try:
        if data[:2] == b"{L":
            reach = _check_ubjson(data)
        elif data[start : start + 1] in (b"{", b"["):
            try:
                doc = json.loads(data)
            except ValueError as exc:
                raise _Malformed(f"invalid JSON: {exc}") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("learner"), dict):
                found = (
                    f"keys {', '.join(map(repr, list(doc)[:5])) or 'none'}"
                    if isinstance(doc, dict)
                    else f"a JSON {type(doc).__name__}"
                )
                raise _Malformed(f"JSON without XGBoost's 'learner' object (found {found})")
            reach = _check_json_trees(doc)
        else:
            shown = data[:16].decode("ascii", "replace")
            raise _Malformed(f"neither UBJSON nor JSON (starts with {shown!r})")
    except _Malformed as exc:
        raise ModelLoadError(f"{path}: not a loadable XGBoost model: {exc}; {EXPECTED}") from None
    try:
        return xgb.Booster(model_file=bytearray(data)), reach
    except Exception as exc:  # XGBoostError, or UnicodeDecodeError while formatting one
        raise ModelLoadError(
            f"{path}: not a loadable XGBoost model: {_xgb_reason(exc)}; {EXPECTED}"
        ) from None


def _learner(booster: Any) -> dict[str, Any]:
    config = json.loads(booster.save_config())
    learner: dict[str, Any] = config["learner"]
    return learner


def _output_kind(objective: str, num_class: int, num_target: int) -> str:
    if objective == "binary:logistic" and num_target == 1:
        return BINARY
    if objective == "multi:softprob" and num_class > 1:
        return SOFTPROB
    if objective == "multi:softmax":
        return SOFTMAX
    return VALUE


def _choose_device(config: ModelConfig, booster: Any) -> str:
    """``cuda:<id>`` when a GPU instance group asks and one is usable, else ``cpu``."""
    groups = [g for g in config.instance_group if g.kind == "KIND_GPU"]
    if not groups:
        return "cpu"
    if not xgb.build_info().get("USE_CUDA", False):
        log.warning(
            "KIND_GPU requested but this xgboost build has no CUDA; predicting on the CPU",
            extra={"model": config.name, "device": "cpu"},
        )
        return "cpu"
    ordinal = groups[0].gpus[0] if groups[0].gpus else 0
    # XGBoost falls back to the CPU by itself when no GPU is visible, with a
    # warning of its own; quiet that and read back which device it settled on.
    with xgb.config_context(verbosity=0):
        booster.set_param({"device": f"cuda:{ordinal}"})
        device = str(_learner(booster)["generic_param"].get("device", "cpu"))
    if not device.startswith("cuda"):
        booster.set_param({"device": "cpu"})
        log.warning(
            "KIND_GPU requested but no GPU is visible; predicting on the CPU",
            extra={"model": config.name, "device": "cpu"},
        )
        return "cpu"
    return device


class _Booster:
    """The booster with its prediction settings: rounds, device, how arrays reach it."""

    def __init__(
        self,
        booster: Any,
        iteration_range: tuple[int, int],
        device: str,
        linear: bool,
        threads: int,
    ) -> None:
        self.booster = booster
        self.iteration_range = iteration_range
        self.device = device
        self.linear = linear
        self.threads = threads
        self.to_device: Callable[[Array], Any] | None = None
        self.quiet = False
        if device.startswith("cuda") and not linear:
            try:
                cupy = importlib.import_module("cupy")
            except ImportError:
                # Host arrays then reach the GPU through a DMatrix XGBoost
                # builds itself, with a warning on every call; same result.
                self.quiet = True
                log.info(
                    "cupy is not installed: batches reach the GPU through a DMatrix copy",
                    extra={"device": device},
                )
            else:
                self.to_device = cupy.asarray

    def predict(self, features: Array) -> Array:
        """XGBoost's default prediction for ``features``, as a float32 host array."""
        if self.linear:
            # gblinear has no inplace_predict; a DMatrix is its only way in.
            matrix = xgb.DMatrix(features, nthread=self.threads)
            return np.asarray(self.booster.predict(matrix), dtype=np.float32)
        data: Any = features if self.to_device is None else self.to_device(features)
        if self.quiet:
            with xgb.config_context(verbosity=0):
                out = self.booster.inplace_predict(data, iteration_range=self.iteration_range)
        else:
            out = self.booster.inplace_predict(data, iteration_range=self.iteration_range)
        if not isinstance(out, np.ndarray):
            out = out.get()  # a cupy array
        return np.asarray(out, dtype=np.float32)


class XGBoostRuntime:
    """One XGBoost Booster answering whole batches with ``inplace_predict``."""

    def __init__(
        self,
        booster: _Booster,
        input_spec: TensorSpec,
        kind: str,
        width: int,
        floats: Mapping[str, str],
    ) -> None:
        self._booster = booster
        self._input = input_spec
        self._kind = kind
        outputs: tuple[TensorSpec, ...]
        if kind == BINARY:
            outputs = class_outputs(floats, 2)
        elif kind == SOFTPROB:
            outputs = class_outputs(floats, width)
        elif kind == SOFTMAX:
            outputs = (TensorSpec("label", "INT64", (-1, 1)),)
        else:
            outputs = (TensorSpec("predictions", floats["predictions"], (-1, width)),)
        self._native = ModelSignature(inputs=(input_spec,), outputs=outputs)
        self._specs = {s.name: s for s in outputs}
        self._dtypes = {s.name: DTYPES[s.datatype] for s in outputs}

    @property
    def native(self) -> ModelSignature:
        return self._native

    @property
    def device(self) -> str:
        return self._booster.device

    def predict(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        x = feature_matrix(self._input, inputs)
        rows = x.shape[0]
        if rows == 0:
            return {n: empty_output(self._specs[n]) for n in outputs}
        raw = self._booster.predict(x)
        result: dict[str, Array] = {}
        if self._kind == BINARY:
            p = raw.reshape(rows)
            if "probabilities" in outputs:
                result["probabilities"] = np.stack([1.0 - p, p], axis=1)
            if "label" in outputs:
                # As XGBClassifier.predict: class 1 when p > 0.5.
                result["label"] = (p > 0.5).astype(np.int64).reshape(rows, 1)
        elif self._kind == SOFTPROB:
            probs = raw.reshape(rows, -1)
            result["probabilities"] = probs
            result["label"] = np.argmax(probs, axis=1).astype(np.int64).reshape(rows, 1)
        elif self._kind == SOFTMAX:
            result["label"] = raw.reshape(rows, 1).astype(np.int64)
        else:
            result["predictions"] = raw.reshape(rows, -1)
        return {name: result[name].astype(self._dtypes[name], copy=False) for name in outputs}

    def unload(self) -> None:
        del self._booster


def load_xgboost(version_dir: Path, config: ModelConfig, instances: int) -> XGBoostRuntime:
    """Load ``model.ubj`` or ``model.json`` (or ``default_model_filename``)."""
    path = model_file(version_dir, config, MODEL_FILENAMES)
    raw, reach = _load_booster(path)
    try:
        learner = _learner(raw)
        objective = str(learner["objective"]["name"])
        params = learner.get("learner_model_param", {})
        num_class = int(params.get("num_class", 0))
        num_target = int(params.get("num_target", 1))
        features = int(raw.num_features())
        rounds = int(raw.num_boosted_rounds())
    except (KeyError, TypeError, ValueError, xgb.core.XGBoostError) as exc:
        raise ModelLoadError(f"{path}: cannot read the booster's configuration: {exc}") from None
    if features < 1:
        raise ModelLoadError(f"{path}: the booster has no features")
    outputs = max(num_class, num_target, 1)
    if reach.group >= outputs or reach.feature >= features:
        what = (
            f"a tree adds to output {reach.group}, the model has outputs 0..{outputs - 1}"
            if reach.group >= outputs
            else f"a tree reads feature {reach.feature}, the model has {features}"
        )
        raise ModelLoadError(f"{path}: not a loadable XGBoost model: {what}; {EXPECTED}")
    input_spec = feature_input_spec(path, config, features, "XGBoost")
    threads = thread_budget(config, instances)
    raw.set_param({"nthread": threads})
    # A model saved after early stopping holds more rounds than its best one;
    # XGBClassifier.predict stops at the best, and so does the server.
    best = raw.attr("best_iteration")
    iteration_range = (0, int(best) + 1) if best is not None and best.isdigit() else (0, 0)
    linear = learner.get("gradient_booster", {}).get("name") == "gblinear"
    booster = _Booster(raw, iteration_range, _choose_device(config, raw), linear, threads)
    try:
        # One row settles the output width (classes, targets) from the model itself.
        probe = booster.predict(np.zeros((1, features), dtype=DTYPES[input_spec.datatype]))
    except Exception as exc:
        raise ModelLoadError(f"{path}: the booster cannot predict: {_xgb_reason(exc)}") from None
    width = max(1, probe.size)
    kind = _output_kind(objective, num_class, num_target)
    if kind in (BINARY, SOFTMAX) and width != 1:
        kind = VALUE
    runtime = XGBoostRuntime(booster, input_spec, kind, width, float_output_types(config, "FP32"))
    log.info(
        "xgboost booster ready",
        extra={
            "model": config.name,
            "path": str(path),
            "objective": objective,
            "features": features,
            "rounds": rounds,
            "iteration_range": list(iteration_range),
            "nthread": threads,
            "device": booster.device,
            "booster": "gblinear" if linear else "trees",
        },
    )
    return runtime
