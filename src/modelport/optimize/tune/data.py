"""The user's rows and labels, split once into calibration and held-out parts.

Static INT8 learns its activation ranges from the calibration part; every
candidate is judged on the held-out part, which the calibration never saw,
so a quantization that only fits its own calibration rows is caught. The
split is a fixed-seed permutation: two runs on the same file compare the
same rows.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelport.optimize.convert.samples import Samples, match_samples, read_data_file
from modelport.optimize.tune.errors import OptimizeFailed
from modelport.types import Array, ModelSignature

SPLIT_SEED = 0
#: Rows static INT8 needs to see at least to estimate activation ranges.
MIN_CALIBRATION_ROWS = 16
#: Rows every candidate is judged on at least.
MIN_HELD_OUT_ROWS = 16
MIN_ROWS = MIN_CALIBRATION_ROWS + MIN_HELD_OUT_ROWS
#: Enough rows for stable ranges; more only make calibration slower.
MAX_CALIBRATION_ROWS = 512
MAX_HELD_OUT_ROWS = 4096


@dataclass(frozen=True)
class Split:
    """Calibration rows, held-out rows, and the held-out labels when given."""

    calibration: dict[str, Array]
    held_out: dict[str, Array]
    labels: Array | None
    origin: str

    @property
    def calibration_rows(self) -> int:
        return int(next(iter(self.calibration.values())).shape[0])

    @property
    def held_out_rows(self) -> int:
        return int(next(iter(self.held_out.values())).shape[0])


def read_samples(path: Path) -> dict[str, Array]:
    """``.npz``/``.npy``/``.csv`` as ``modelport convert`` reads them, plus ``.parquet``."""
    if path.suffix.lower() != ".parquet":
        return read_data_file(path)
    if not path.is_file():
        raise OptimizeFailed(f"--data {path}: no such file")
    if importlib.util.find_spec("pandas") is None:
        raise OptimizeFailed(
            f"--data {path}: reading .parquet needs pandas with pyarrow or fastparquet; "
            "save the rows as .npz instead"
        )
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except ImportError as exc:
        raise OptimizeFailed(
            f"--data {path}: pandas cannot read parquet here ({exc}); "
            "install pyarrow or save the rows as .npz"
        ) from None
    except (OSError, ValueError) as exc:
        raise OptimizeFailed(f"--data {path}: cannot read: {exc}") from None
    # Every column is a feature of the single input, in file order.
    return {"": frame.to_numpy()}


def read_labels(path: Path, rows: int) -> Array:
    """One label (or target) per sample row, from ``.npy``, ``.csv`` or a one-array ``.npz``."""
    raw = read_samples(path)
    if len(raw) != 1:
        raise OptimizeFailed(
            f"--labels {path}: holds {len(raw)} arrays ({', '.join(raw)}); expected one"
        )
    labels = np.asarray(next(iter(raw.values())))
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise OptimizeFailed(
            f"--labels {path}: expected one label per row, got shape {list(labels.shape)}"
        )
    if labels.shape[0] != rows:
        raise OptimizeFailed(
            f"--labels {path}: has {labels.shape[0]} labels, but --data has {rows} rows"
        )
    if labels.dtype.kind not in "biuf":
        raise OptimizeFailed(f"--labels {path}: labels must be numbers, got {labels.dtype}")
    return labels


def load_samples(path: Path, raw: dict[str, Array], signature: ModelSignature) -> Samples:
    """Check the rows against the model's inputs (names, dtypes, shapes) and count them."""
    if signature.max_batch_size <= 0:
        raise OptimizeFailed(
            "optimize needs a model with a batch dimension (max_batch_size > 0): rows are "
            "split into calibration and held-out parts and timed at several batch sizes"
        )
    samples = match_samples(raw, signature, str(path))
    if samples.rows < MIN_ROWS:
        raise OptimizeFailed(
            f"--data {path}: {samples.rows} rows are too few; optimize needs at least "
            f"{MIN_ROWS} ({MIN_CALIBRATION_ROWS} to calibrate INT8, {MIN_HELD_OUT_ROWS} held out "
            "to judge every candidate)"
        )
    return samples


def split_rows(samples: Samples, labels: Array | None, seed: int = SPLIT_SEED) -> Split:
    """Half the rows (at most 512) calibrate; the rest (at most 4096) are held out."""
    order = np.random.default_rng(seed).permutation(samples.rows)
    calibrate = min(MAX_CALIBRATION_ROWS, samples.rows // 2)
    cal_idx = order[:calibrate]
    held_idx = order[calibrate : calibrate + MAX_HELD_OUT_ROWS]
    return Split(
        calibration={n: np.ascontiguousarray(a[cal_idx]) for n, a in samples.arrays.items()},
        held_out={n: np.ascontiguousarray(a[held_idx]) for n, a in samples.arrays.items()},
        labels=None if labels is None else labels[held_idx],
        origin=samples.origin,
    )
