"""Reference profiles of a model's inputs, and counting inputs that fall far outside them.

A profile is built once from real inputs (``modelport profile``) and stored
beside the model as ``reference_profile.json``. For each numeric input it
keeps, per feature, a low and a high quantile of what training or production
data looked like. At serving time, a value is *out of profile* when it lies
beyond ``margin`` times the feature's inter-quantile span past either bound.
That catches unit mistakes, broken upstream features and probing, without
flagging ordinary tails.

Checking is one vectorised comparison per input, only for models with a
profile. Inputs with more than ``MAX_LABELLED_FEATURES`` features (images)
are counted as one series instead of one per feature, to keep metric
cardinality bounded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import ConfigError
from modelport.types import Array

PROFILE_FILE = "reference_profile.json"
FORMAT = 1
QUANTILES = (0.001, 0.999)
#: A value is out of profile when it is this many spans beyond a bound.
DEFAULT_MARGIN = 0.5
MAX_LABELLED_FEATURES = 256
#: The feature label of inputs counted as a whole.
ALL_FEATURES = "*"


@dataclass(frozen=True)
class InputBounds:
    low: Array
    """Per feature, the lower bound below which a value is out of profile."""
    high: Array
    per_feature: bool


def build_profile(
    samples: Mapping[str, Array], quantiles: tuple[float, float] = QUANTILES
) -> dict[str, Any]:
    """Per numeric input and feature, the quantiles of ``samples`` (rows first)."""
    inputs: dict[str, Any] = {}
    for name, array in samples.items():
        if array.dtype.kind not in "biuf" or array.ndim == 0 or array.shape[0] == 0:
            continue
        rows = array.reshape(array.shape[0], -1).astype(np.float64)
        low, high = np.quantile(rows, quantiles, axis=0)
        inputs[name] = {
            "rows": int(rows.shape[0]),
            "features": int(rows.shape[1]),
            "low": low.tolist(),
            "high": high.tolist(),
        }
    return {"format": FORMAT, "quantiles": list(quantiles), "inputs": inputs}


class InputProfile:
    """A loaded profile: counts out-of-profile values per input and feature."""

    def __init__(self, bounds: dict[str, InputBounds]) -> None:
        self.bounds = bounds

    @classmethod
    def load(cls, path: Path, margin: float = DEFAULT_MARGIN) -> InputProfile:
        where = str(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(where, "", f"cannot read: {exc.strerror}") from None
        except ValueError as exc:
            raise ConfigError(where, "", f"invalid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigError(where, "format", f"expected {FORMAT}")
        inputs = data.get("inputs")
        if not isinstance(inputs, dict):
            raise ConfigError(where, "inputs", "expected a mapping of input name to bounds")
        bounds: dict[str, InputBounds] = {}
        for name, entry in inputs.items():
            field = f"inputs.{name}"
            try:
                low = np.asarray(entry["low"], dtype=np.float64)
                high = np.asarray(entry["high"], dtype=np.float64)
            except (KeyError, TypeError, ValueError):
                raise ConfigError(where, field, "needs numeric 'low' and 'high' lists") from None
            if low.ndim != 1 or low.shape != high.shape or not np.all(low <= high):
                raise ConfigError(
                    where, field, "'low' and 'high' must be equal-length, low <= high"
                )
            span = high - low
            bounds[name] = InputBounds(
                low=low - margin * span,
                high=high + margin * span,
                per_feature=low.shape[0] <= MAX_LABELLED_FEATURES,
            )
        return cls(bounds)

    def outliers(self, inputs: Mapping[str, Array]) -> list[tuple[str, str, int]]:
        """(input, feature, count) for every feature with values out of profile."""
        found: list[tuple[str, str, int]] = []
        for name, bounds in self.bounds.items():
            array = inputs.get(name)
            if array is None or array.dtype.kind not in "biuf" or array.ndim == 0:
                continue
            rows = array.reshape(array.shape[0], -1) if array.shape[0] else None
            if rows is None or rows.shape[1] != bounds.low.shape[0]:
                continue
            outside = (rows < bounds.low) | (rows > bounds.high)
            if not outside.any():
                continue
            if bounds.per_feature:
                per_feature = outside.sum(axis=0)
                for feature in np.flatnonzero(per_feature):
                    found.append((name, str(int(feature)), int(per_feature[feature])))
            else:
                found.append((name, ALL_FEATURES, int(outside.sum())))
        return found


def load_profile(version_dir: Path) -> InputProfile | None:
    """The version's profile if it ships one (``reference_profile.json``)."""
    path = version_dir / PROFILE_FILE
    return InputProfile.load(path) if path.is_file() else None
