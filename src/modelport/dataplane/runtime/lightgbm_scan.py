"""The safety scan of a LightGBM model.txt, before LightGBM parses it.

LightGBM parses a model's trees where any error aborts the process, and
follows the indices in them unchecked: a truncated or damaged model.txt can
kill the whole server, not just fail its load. So the text is checked first,
as LightGBM will read it (tree sizes and fields, child and feature indices,
the parameters section), and what fails becomes ``Malformed``, which the
runtime turns into a load error naming the file. The scan imports no
LightGBM: it only reads bytes and numbers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np


class Malformed(Exception):
    """The model text would make LightGBM abort the process."""


#: LightGBM reads at most this many ``key=value`` lines per tree.
_TREE_LINES = 22
#: A tree's fields it cannot do without once it has more than one leaf.
_NODE_FIELDS = ("left_child", "right_child", "split_feature", "threshold")
_TREE_START = re.compile(rb"^Tree=", re.MULTILINE)
_PARAMETERS = re.compile(rb"^parameters:\r?\n", re.MULTILINE)


def _numbers(kv: Mapping[bytes, bytes], key: str, n: int, where: str, *, ints: bool) -> Any:
    """The ``n`` numbers of a tree field, or Malformed when they are not exactly that."""
    raw = kv.get(key.encode())
    if raw is None:
        return None
    tokens = raw.split()
    if len(tokens) != n:
        raise Malformed(f"{where}: {key} has {len(tokens)} values, expected {n}")
    try:
        return np.array(tokens, dtype=np.bytes_).astype(np.int64 if ints else np.float64)
    except (ValueError, OverflowError):
        raise Malformed(f"{where}: {key} holds a value that is not a number") from None


def _integer(kv: Mapping[bytes, bytes], key: str, where: str, default: int | None = None) -> int:
    raw = kv.get(key.encode())
    if raw is None:
        if default is None:
            raise Malformed(f"{where} has no {key}")
        return default
    try:
        return int(raw)
    except ValueError:
        raise Malformed(f"{where}: {key} is not an integer") from None


def _check_tree(block: bytes, index: int, features: int) -> None:
    """A tree block has the fields, counts and in-range indices LightGBM relies on.

    LightGBM parses trees inside an OpenMP loop where a parse error aborts
    the whole process (seen with lightgbm 4.7 on a truncated model.txt), and
    it follows child and feature indices unchecked when it predicts. So every
    check its tree parser makes is made here first, in Python, where a
    failure is a load error for this model alone.
    """
    where = f"tree {index}"
    lines = block.split(b"\n")
    if not lines[0].startswith(b"Tree="):
        raise Malformed(f"{where} does not start with 'Tree=' where tree_sizes puts it")
    kv: dict[bytes, bytes] = {}
    for read, raw_line in enumerate(lines[1:]):
        line = raw_line.rstrip(b"\r")
        if not line or read == _TREE_LINES:
            break
        key, eq, value = line.partition(b"=")
        if not eq:
            raise Malformed(f"{where}: line {line[:40]!r} is not key=value")
        kv[key] = value
    else:
        raise Malformed(f"{where} is cut short (no blank line after its fields)")
    leaves = _integer(kv, "num_leaves", where)
    cats = _integer(kv, "num_cat", where)
    if leaves < 1 or cats < 0:
        raise Malformed(f"{where}: num_leaves {leaves}, num_cat {cats}")
    if _numbers(kv, "leaf_value", leaves, where, ints=False) is None:
        raise Malformed(f"{where} has no leaf_value")
    linear = _integer(kv, "is_linear", where, 0) != 0
    if leaves <= 1 and not linear:
        return
    inner = leaves - 1
    required = {k: _numbers(kv, k, inner, where, ints=k != "threshold") for k in _NODE_FIELDS}
    missing = [k for k, v in required.items() if v is None]
    if missing:
        raise Malformed(f"{where} has no {', '.join(missing)}")
    for field, n, ints in (
        ("split_gain", inner, False),
        ("internal_count", inner, True),
        ("internal_value", inner, False),
        ("internal_weight", inner, False),
        ("decision_type", inner, True),
        ("leaf_weight", leaves, False),
        ("leaf_count", leaves, True),
    ):
        _numbers(kv, field, n, where, ints=ints)
    # Every node but the root is the child of exactly one node, and every leaf
    # too: then prediction walks a tree, never out of it nor round a loop.
    children = np.concatenate([required["left_child"], required["right_child"]])
    nodes = np.sort(children[children >= 0])
    leaf_ids = np.sort(~children[children < 0])
    if not (
        np.array_equal(nodes, np.arange(1, inner)) and np.array_equal(leaf_ids, np.arange(leaves))
    ):
        raise Malformed(f"{where}: its child indices do not form a tree of {leaves} leaves")
    split = required["split_feature"]
    if np.any((split < 0) | (split >= features)):
        raise Malformed(f"{where}: split_feature names a feature outside 0..{features - 1}")
    if cats > 0:
        bounds = _numbers(kv, "cat_boundaries", cats + 1, where, ints=True)
        if bounds is None or bounds[0] != 0 or np.any(np.diff(bounds) < 0):
            raise Malformed(f"{where}: cat_boundaries missing or out of order")
        if _numbers(kv, "cat_threshold", int(bounds[-1]), where, ints=True) is None:
            raise Malformed(f"{where} has no cat_threshold")
        decision = _numbers(kv, "decision_type", inner, where, ints=True)
        if decision is not None:
            categorical = (decision & 1) == 1
            slots = required["threshold"][categorical]
            if np.any((slots < 0) | (slots >= cats)):
                raise Malformed(f"{where}: a categorical split points outside its {cats} sets")
    if linear:
        counts = _numbers(kv, "num_features", leaves, where, ints=True)
        _numbers(kv, "leaf_const", leaves, where, ints=False)
        if counts is not None:
            total = int(counts.sum())
            used = _numbers(kv, "leaf_features", total, where, ints=True)
            _numbers(kv, "leaf_coeff", total, where, ints=False)
            if np.any(counts < 0) or (used is not None and np.any((used < 0) | (used >= features))):
                raise Malformed(f"{where}: a linear leaf uses a feature outside the model")


def scan_model(data: bytes) -> dict[bytes, bytes]:
    """Check the model text LightGBM is about to parse; return its header fields.

    Raises Malformed, saying why, for text LightGBM could not parse or
    predict with safely.
    """
    first, _, _ = data.partition(b"\n")
    if first.rstrip(b"\r") != b"tree":
        shown = first[:40].decode("utf-8", "replace")
        raise Malformed(f"the first line is {shown!r}, not 'tree'")
    header: dict[bytes, bytes] = {}
    pos = 0
    trees_at = -1
    while pos < len(data):
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end
        line = data[pos:end].rstrip(b"\r")
        if line.startswith(b"Tree="):
            trees_at = pos
            break
        if line.startswith(b"end of trees"):
            break
        key, _, value = line.partition(b"=")
        header.setdefault(key, value)
        pos = end + 1
    try:
        features = int(header.get(b"max_feature_idx", b"")) + 1
    except ValueError:
        raise Malformed("the header has no max_feature_idx") from None
    _check_header(header)
    if b"tree_sizes" not in header:
        # Older files: LightGBM reads the trees one after another, outside any
        # parallel loop, so its own errors are clean; check what follows anyway.
        if trees_at >= 0:
            stop = data.find(b"\nend of trees", trees_at)
            body = data[trees_at : len(data) if stop < 0 else stop + 1]
            starts = [m.start() for m in _TREE_START.finditer(body)]
            for i, (a, b) in enumerate(zip(starts, [*starts[1:], len(body)], strict=True)):
                _check_tree(body[a:b], i, features)
    else:
        _check_sized_trees(data, header[b"tree_sizes"], trees_at, features)
    _check_parameters(data)
    return header


def _check_header(header: Mapping[bytes, bytes]) -> None:
    """The class counts agree: LightGBM sizes its output buffers from them, unchecked."""
    classes = _integer(header, "num_class", "the header")
    per_iteration = _integer(header, "num_tree_per_iteration", "the header", classes)
    if classes < 1 or per_iteration != classes:
        raise Malformed(f"num_class {classes} and num_tree_per_iteration {per_iteration} disagree")
    objective = header.get(b"objective", b"").split()
    for token in objective[1:]:
        name, _, value = token.partition(b":")
        if name == b"num_class" and value != str(classes).encode():
            raise Malformed(
                f"the objective says num_class:{value.decode(errors='replace')}, "
                f"the header {classes}"
            )
    if b"tree_sizes" in header and len(header[b"tree_sizes"].split()) % per_iteration:
        raise Malformed(f"the trees do not fill whole iterations of {per_iteration}")


def _check_sized_trees(data: bytes, listed: bytes, trees_at: int, features: int) -> None:
    """Trees where ``tree_sizes`` says they are; LightGBM jumps there without looking."""
    try:
        sizes = [int(s) for s in listed.split()]
    except ValueError:
        raise Malformed("tree_sizes is not a list of integers") from None
    if not sizes:
        return
    if trees_at < 0:
        raise Malformed(f"the header lists {len(sizes)} trees but none follows (cut short?)")
    if any(s <= 0 for s in sizes) or trees_at + sum(sizes) > len(data):
        raise Malformed(
            f"the {len(sizes)} trees need {sum(sizes)} bytes after byte {trees_at}, "
            f"the file has {len(data) - trees_at} (cut short?)"
        )
    start = trees_at
    for i, size in enumerate(sizes):
        _check_tree(data[start : start + size], i, features)
        start += size


def _check_parameters(data: bytes) -> None:
    """The ``parameters:`` section is whole and every line in it is ``[name: value]``.

    LightGBM splits each of those lines at ':' and reads the second part
    without checking there is one: a line cut short (a truncated file) or
    damaged crashes the process when the booster reports its parameters.
    """
    found = _PARAMETERS.search(data)
    if found is None:
        return
    end = data.find(b"\nend of parameters", found.end() - 1)
    if end < 0:
        raise Malformed("the parameters: section has no 'end of parameters' line (cut short?)")
    for line in data[found.end() : end + 1].splitlines():
        if line and b":" not in line:
            shown = line[:40].decode("utf-8", "replace")
            raise Malformed(f"parameter line {shown!r} is not '[name: value]'")
