"""The rows both models answer: a user's data file, or rows made up from the signature.

A data file is read before the model loads (a typo fails at once) and
matched against the signature after: every input present by name, nothing
extra, each array's type convertible without losing meaning and its shape
fitting the served one, every input with the same number of rows.

Without a file, rows are generated with a fixed seed so two runs check the
same rows; the report says so, because made-up rows may miss the regions of
the input space where a conversion goes wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import first_line
from modelport.optimize.convert.errors import ConversionFailed
from modelport.types import DTYPES, Array, ModelSignature, TensorSpec

SYNTHETIC_ROWS = 256
SYNTHETIC_SEED = 0
#: Size given to an open dimension other than the batch dimension.
OPEN_DIM = 4
DATA_SUFFIXES = (".npz", ".npy", ".csv")
_WORDS = ("alpha", "beta", "gamma", "delta", "red", "green", "blue", "one", "two", "three")


@dataclass(frozen=True)
class Samples:
    """Named input arrays with a common first dimension, and where they came from."""

    arrays: dict[str, Array]
    rows: int
    synthetic: bool
    origin: str


def read_data_file(path: Path) -> dict[str, Array]:
    """The arrays in a ``.npz`` (by name), ``.npy`` or ``.csv`` file (one unnamed array).

    The unnamed array is keyed ``""``; ``match_samples`` gives it to the
    model's only input. Pickled object arrays are never loaded.
    """
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise ConversionFailed(
            f"--data {path}: unknown file type {suffix or '(none)'!r} "
            "(expected .npz with one array per input name, or .npy / .csv for a single input)"
        )
    if not path.is_file():
        raise ConversionFailed(f"--data {path}: no such file")
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        if suffix == ".npy":
            return {"": np.load(path, allow_pickle=False)}
        return {"": _read_csv(path)}
    except ConversionFailed:
        raise
    except (OSError, ValueError, EOFError) as exc:
        first = first_line(exc)
        raise ConversionFailed(f"--data {path}: cannot read: {first}") from None


def _read_csv(path: Path) -> Array:
    """Numbers when every field parses as one (a header line is skipped), else text."""
    for skip in (0, 1):
        try:
            numbers: Array = np.loadtxt(path, delimiter=",", ndmin=2, skiprows=skip)
            return numbers
        except ValueError:
            continue
    text: Array = np.loadtxt(path, delimiter=",", ndmin=2, dtype=str)
    return text


def _converted(spec: TensorSpec, array: Array, where: str) -> Array:
    """``array`` in the input's storage type, refusing conversions that change meaning."""
    kind = array.dtype.kind
    if spec.datatype == "BYTES":
        if kind not in "USO":
            raise ConversionFailed(f"{where} holds {array.dtype} numbers, but the input is text")
        out = np.empty(array.shape, dtype=object)
        flat = out.reshape(-1)
        for i, value in enumerate(array.reshape(-1)):
            flat[i] = value if isinstance(value, bytes) else str(value).encode("utf-8")
        return out
    if kind not in "biuf":
        raise ConversionFailed(
            f"{where} holds {array.dtype} values, but the input is {spec.datatype} numbers"
        )
    target = DTYPES[spec.datatype]
    if target.kind in "biu" and kind == "f" and not np.all(np.isfinite(array) & (array % 1 == 0)):
        raise ConversionFailed(
            f"{where} holds fractional numbers, but the input is {spec.datatype}"
        )
    return array.astype(target, copy=False)


def _fits(spec: TensorSpec, shape: tuple[int, ...], batched: bool) -> bool:
    if len(shape) != len(spec.shape):
        return False
    start = 1 if batched else 0
    return all(w in (-1, d) for w, d in zip(spec.shape[start:], shape[start:], strict=True))


def match_samples(raw: Mapping[str, Array], signature: ModelSignature, origin: str) -> Samples:
    """Check a data file's arrays against the signature; name every mismatch."""
    names = [s.name for s in signature.inputs]
    if set(raw) == {""}:
        if len(names) != 1:
            raise ConversionFailed(
                f"--data {origin}: holds one unnamed array, but the model has {len(names)} "
                f"inputs ({', '.join(names)}); use .npz with one array per input name"
            )
        raw = {names[0]: raw[""]}
    missing = [n for n in names if n not in raw]
    extra = [n for n in raw if n not in names]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no array for input {', '.join(map(repr, missing))}")
        if extra:
            listed = ", ".join(map(repr, extra))
            parts.append(
                f"array {listed} is not an input of the model"
                if len(extra) == 1
                else f"arrays {listed} are not inputs of the model"
            )
        raise ConversionFailed(
            f"--data {origin}: {'; '.join(parts)} (the model's inputs: {', '.join(names)})"
        )
    batched = signature.max_batch_size > 0
    arrays: dict[str, Array] = {}
    rows: dict[str, int] = {}
    for spec in signature.inputs:
        where = f"--data {origin}: array {spec.name!r}"
        array = np.asarray(raw[spec.name])
        if not _fits(spec, array.shape, batched):
            raise ConversionFailed(
                f"{where} has shape {list(array.shape)}, which does not fit the model's "
                f"{list(spec.shape)}"
                + (" (-1 in the first place: any number of rows)" if batched else "")
            )
        arrays[spec.name] = _converted(spec, array, where)
        rows[spec.name] = int(array.shape[0]) if batched else 1
    counts = set(rows.values())
    if len(counts) > 1:
        listed = ", ".join(f"{n}: {r}" for n, r in rows.items())
        raise ConversionFailed(f"--data {origin}: inputs have different numbers of rows ({listed})")
    count = counts.pop()
    if count < 1:
        raise ConversionFailed(f"--data {origin}: holds no rows")
    return Samples(arrays, count, False, origin)


def _drawn(
    spec: TensorSpec, shape: tuple[int, ...], values: Sequence[Any], rng: np.random.Generator
) -> Array:
    """Values drawn from those the model knows (a column's categories)."""
    picked = rng.integers(0, len(values), size=shape)
    out = np.empty(shape, dtype=object if spec.datatype == "BYTES" else DTYPES[spec.datatype])
    flat = out.reshape(-1)
    for i, index in enumerate(picked.reshape(-1)):
        value = values[int(index)]
        flat[i] = str(value).encode("utf-8") if spec.datatype == "BYTES" else value
    return out


def _synthetic(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator) -> Array:
    datatype = spec.datatype
    if datatype == "BYTES":
        out = np.empty(shape, dtype=object)
        flat = out.reshape(-1)
        for i in range(flat.size):
            words = rng.choice(_WORDS, size=int(rng.integers(1, 4)))
            flat[i] = " ".join(str(w) for w in words).encode()
        return out
    if datatype == "BOOL":
        flags: Array = rng.random(shape) < 0.5
        return flags
    dtype = DTYPES[datatype]
    if dtype.kind in "iu":
        return rng.integers(0, 10, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def synthetic_samples(
    signature: ModelSignature,
    rows: int = SYNTHETIC_ROWS,
    seed: int = SYNTHETIC_SEED,
    known: Mapping[str, Sequence[Any]] | None = None,
) -> Samples:
    """Rows made from the signature: standard normal floats, small integers, short words.

    ``known`` gives, per input, the values the model was fitted on (a
    DataFrame column's categories); that input's rows are drawn from them,
    so an encoder that refuses unknown categories still answers.
    """
    batched = signature.max_batch_size > 0
    rng = np.random.default_rng(seed)
    arrays: dict[str, Array] = {}
    for spec in signature.inputs:
        if spec.datatype not in DTYPES or spec.datatype == "BF16":
            raise ConversionFailed(f"input {spec.name!r} is {spec.datatype}; pass --data instead")
        shape = tuple(
            (rows if batched and i == 0 else OPEN_DIM) if d < 0 else d
            for i, d in enumerate(spec.shape)
        )
        values = (known or {}).get(spec.name)
        if values:
            arrays[spec.name] = _drawn(spec, shape, values, rng)
        else:
            arrays[spec.name] = _synthetic(spec, shape, rng)
    origin = f"synthetic, {rows if batched else 1} rows made from the signature (seed {seed})"
    return Samples(arrays, rows if batched else 1, True, origin)
