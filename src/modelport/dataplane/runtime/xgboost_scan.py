"""The safety scan of an XGBoost model file, before XGBoost reads it.

XGBoost trusts the sizes and indices in a model file: a truncated or damaged
one can crash the whole server, not just fail its load. So the file is
scanned first (UBJSON structure and bounds; each tree's node links, feature
indices and array sizes; the forest's bookkeeping), and what fails becomes
``Malformed``, which the runtime turns into a load error naming the file.
The scan imports no XGBoost: it only reads bytes and numbers.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

_LEADING_SPACE = re.compile(rb"\s*")


class Malformed(Exception):
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
        raise Malformed(f"{where}: {key} is not a list of numbers") from None
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values % 1 == 0):
        return values.astype(np.int64)
    if values.dtype.kind not in "iub":
        raise Malformed(f"{where}: {key} is not whole numbers")
    return values.astype(np.int64)


def _number(fields: Any, key: str, default: int, where: str) -> int:
    if not isinstance(fields, Mapping) or key not in fields:
        return default
    try:
        return int(fields[key])
    except (TypeError, ValueError):
        raise Malformed(f"{where}: {key} is not a number") from None


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
        raise Malformed(f"{where} lacks {', '.join(missing)}")
    if _number(fields, "id", index, where) != index:
        # XGBoost files each tree under its id, unchecked.
        raise Malformed(f"{where} has id {_number(fields, 'id', index, where)}")
    left, right, parents, split = (_ints(fields, k, where) for k in _INDEX_ARRAYS)
    n = len(left)
    param = fields.get("tree_param")
    if _number(param, "num_nodes", n, where) != n:
        raise Malformed(f"{where} says {_number(param, 'num_nodes', n, where)} nodes, has {n}")
    num_feature = _number(param, "num_feature", 0, where)
    leaf_size = max(1, _number(param, "size_leaf_vector", 1, where))
    sizes = {k: len(fields[k]) for k in (*_INDEX_ARRAYS, *_NODE_ARRAYS) if k in fields}
    if any(size != n for size in sizes.values()):
        raise Malformed(f"{where} has node arrays of different lengths {sizes}")
    if "base_weights" in fields and len(fields["base_weights"]) != n * leaf_size:
        raise Malformed(
            f"{where} has {len(fields['base_weights'])} base_weights, not {n * leaf_size}"
        )
    leaf = left == -1
    inner = ~leaf
    children = np.concatenate([left[inner], right[inner]])
    if np.any((children <= 0) | (children >= n)):
        raise Malformed(f"{where}: a child index points outside its {n} nodes")
    if not np.all((parents == _NO_PARENT) | (parents == -1) | ((parents >= 0) & (parents < n))):
        raise Malformed(f"{where}: parents points outside its {n} nodes")
    # Every child names its parent back and the root has none: then the nodes
    # reachable from the root form a tree, with no loop for prediction to follow.
    ids = np.flatnonzero(inner)
    if n and (
        parents[0] not in (_NO_PARENT, -1)
        or np.any(left[inner] == right[inner])
        or np.any(parents[left[inner]] != ids)
        or np.any(parents[right[inner]] != ids)
    ):
        raise Malformed(f"{where}: its children and parents do not form a tree")
    if np.any(split < 0) or (num_feature > 0 and np.any(split >= num_feature)):
        raise Malformed(f"{where}: split_indices names a feature outside 0..{num_feature - 1}")
    leaves = int(np.count_nonzero(leaf))
    # A vector-leaf tree keeps each leaf's row of leaf_weights in right_children.
    if leaf_size > 1 and np.any((right[leaf] < 0) | (right[leaf] >= leaves)):
        raise Malformed(f"{where}: a leaf points outside its {leaves} leaf_weights rows")
    if leaf_size > 1 and len(fields.get("leaf_weights", ())) != leaves * leaf_size:
        raise Malformed(
            f"{where} has {len(fields.get('leaf_weights', ()))} leaf_weights, "
            f"not {leaves * leaf_size}"
        )
    for key in ("split_type", "default_left"):
        flags = _ints(fields, key, where)
        if np.any((flags != 0) & (flags != 1)):
            raise Malformed(f"{where}: {key} holds values other than 0 and 1")
    cats = len(fields.get("categories", ()))
    nodes, segments, counts = (_ints(fields, k, where) for k in _CATEGORY_ARRAYS[1:])
    kinds = _ints(fields, "split_type", where)
    categorical = np.flatnonzero(inner & (kinds == 1)) if len(kinds) == n else kinds[:0]
    if len(categorical) and not np.all(np.isin(categorical, nodes)):
        raise Malformed(f"{where}: a categorical split has no categories")
    if not len(nodes) == len(segments) == len(counts):
        raise Malformed(f"{where}: categorical split arrays differ in length")
    if np.any(
        (nodes < 0) | (nodes >= n) | (segments < 0) | (counts < 0) | (segments + counts > cats)
    ):
        raise Malformed(f"{where}: categorical splits point outside the tree or its categories")
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
        raise Malformed(f"{where} says {declared} trees but holds {trees}")
    info = _ints(fields, "tree_info", where)
    if len(info) != trees or np.any(info < 0):
        raise Malformed(f"{where}: tree_info does not give a group for each of {trees} trees")
    if "iteration_indptr" in fields:
        ptr = _ints(fields, "iteration_indptr", where)
        if len(ptr) == 0 or ptr[0] != 0 or ptr[-1] != trees or np.any(np.diff(ptr) < 0):
            raise Malformed(f"{where}: iteration_indptr does not partition {trees} trees")
    return int(info.max()) if len(info) else -1


@dataclass
class Reach:
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
        self.reach = Reach()

    def need(self, n: int) -> int:
        if n < 0 or self.pos + n > len(self.data):
            raise Malformed(f"truncated at byte {self.pos} (needs {n} more)")
        start = self.pos
        self.pos += n
        return start

    def byte(self) -> int:
        return self.data[self.need(1)]

    def peek(self) -> int:
        if self.pos >= len(self.data):
            raise Malformed(f"truncated at byte {self.pos}")
        return self.data[self.pos]

    def expect(self, char: str) -> None:
        at = self.pos
        got = self.byte()
        if got != ord(char):
            raise Malformed(f"expected {char!r} at byte {at}, found {chr(got)!r}")

    def length(self) -> int:
        """An ``L``-marked int64 length, as XGBoost writes every length."""
        self.expect("L")
        (n,) = struct.unpack_from(">q", self.data, self.need(8))
        if n < 0 or n > len(self.data) - self.pos:
            raise Malformed(f"length {n} at byte {self.pos - 8} runs past the end of the file")
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
            raise Malformed(f"nested deeper than {_MAX_DEPTH} levels")
        at = self.pos
        marker = self.byte()
        if role == "tree" and marker != ord("{"):
            raise Malformed(f"tree {self.trees} at byte {at} is not an object")
        if role == "trees" and marker != ord("["):
            raise Malformed(f"'trees' at byte {at} is not a list")
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
        raise Malformed(f"unknown marker {chr(marker)!r} at byte {at}")

    def array(self, depth: int, keep: bool, trees: bool = False) -> Any:
        marker = self.peek()
        if marker == ord("$"):
            self.pos += 1
            at = self.pos
            kind = self.byte()
            if kind not in _FIXED:
                raise Malformed(f"typed array of {chr(kind)!r} at byte {at} is not supported")
            self.expect("#")
            n = self.length()
            size, dtype = _FIXED[kind]
            start = self.need(n * size)
            if trees:
                raise Malformed(f"'trees' at byte {at} holds numbers, not trees")
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


def _check_ubjson(data: bytes) -> Reach:
    """Check a UBJSON model; return how far its trees reach."""
    scanner = _UBJScanner(data)
    scanner.value(0, False)
    return scanner.reach


def _check_json_trees(doc: Any) -> Reach:
    """The tree and forest checks of the UBJSON scan, on a parsed JSON model."""
    reach = Reach()
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            trees = node.get("trees")
            if "tree_info" in node or isinstance(trees, list):
                trees = trees if isinstance(trees, list) else []
                for i, tree in enumerate(trees):
                    if not isinstance(tree, dict):
                        raise Malformed(f"tree {i} is not an object")
                    reach.feature = max(reach.feature, _check_tree(tree, i))
                reach.group = max(reach.group, _check_forest(node, len(trees)))
            stack.extend(v for k, v in node.items() if k != "trees")
        elif isinstance(node, list) and node and isinstance(node[0], dict | list):
            stack.extend(node)
    return reach


def scan_model(data: bytes) -> Reach:
    """Check the bytes of a ``model.ubj`` or ``model.json``; return how far its trees reach.

    The format is told by the content, not the file name, as XGBoost does:
    UBJSON is walked in place, JSON is parsed and its trees checked.
    Raises Malformed, saying why, for anything XGBoost could not read safely.
    """
    space = _LEADING_SPACE.match(data)
    start = space.end() if space is not None else 0
    if data[:2] == b"{L":
        return _check_ubjson(data)
    if data[start : start + 1] in (b"{", b"["):
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise Malformed(f"invalid JSON: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("learner"), dict):
            found = (
                f"keys {', '.join(map(repr, list(doc)[:5])) or 'none'}"
                if isinstance(doc, dict)
                else f"a JSON {type(doc).__name__}"
            )
            raise Malformed(f"JSON without XGBoost's 'learner' object (found {found})")
        return _check_json_trees(doc)
    shown = data[:16].decode("ascii", "replace")
    raise Malformed(f"neither UBJSON nor JSON (starts with {shown!r})")
