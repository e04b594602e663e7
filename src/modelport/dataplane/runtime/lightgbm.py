"""LightGBM backend (``backend: lightgbm``, file ``model.txt``).

Loads the text model ``Booster.save_model`` writes (``LGBMClassifier``'s
``booster_.save_model`` too). The signature comes from the booster: its
feature count gives the single input ``[-1, n]``, and its objective decides
the outputs, named as for XGBoost:

- ``binary``: ``probabilities`` ``[N, 2]`` (1-p, p) and ``label`` INT64
  ``[N, 1]``;
- ``multiclass`` / ``multiclassova``: ``probabilities`` ``[N, k]`` and
  ``label``;
- anything else (regression, ranking, cross-entropy, custom):
  ``predictions`` ``[N, outputs]``, LightGBM's default prediction.

LightGBM computes in double precision, so ``probabilities`` and
``predictions`` are FP64 unless config.yaml lists them as TYPE_FP32 (a
regression target near 300 moves by 3e-5 in float32).

Labels are class indices (``LGBMClassifier`` maps them back to its
``classes_``, which the model file does not hold). Thread count: the
``intra_op_thread_count`` parameter, else the cores less one split between
the instances. LightGBM predicts on the CPU only, so a ``KIND_GPU`` instance
group runs there, and the log says so.

LightGBM parses a model's trees where any error aborts the process, and
follows the indices in them unchecked: a truncated or damaged model.txt can
kill the whole server, not just fail its load. So ``lightgbm_scan.py``
checks the text first, and what fails becomes a load error that names the
file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from modelport.config.model import ModelConfig
from modelport.dataplane.runtime.features import (
    class_outputs,
    empty_output,
    feature_input_spec,
    feature_matrix,
    float_output_types,
)
from modelport.dataplane.runtime.files import version_file
from modelport.dataplane.runtime.lightgbm_scan import Malformed, scan_model
from modelport.dataplane.runtime.threads import thread_budget
from modelport.errors import ModelLoadError, first_line
from modelport.types import DTYPES, Array, ModelSignature, TensorSpec

log = logging.getLogger("modelport.runtime.lightgbm")

MODEL_FILENAME = "model.txt"
BINARY, MULTICLASS, VALUE = "binary", "multiclass", "value"
MULTICLASS_OBJECTIVES = frozenset({"multiclass", "multiclassova", "softmax", "ova", "ovr"})
EXPECTED = "expected the text model LightGBM's Booster.save_model writes"


# ------------------------------------------------------------------ loading


def _load_booster(path: Path) -> tuple[Any, dict[bytes, bytes]]:
    """The Booster in ``path`` and its header, or a ModelLoadError naming the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        header = scan_model(data)
        text = data.decode("utf-8")
    except (Malformed, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: not a loadable LightGBM model: {exc}; {EXPECTED}") from None
    try:
        booster = lgb.Booster(model_str=text)
    except Exception as exc:  # LightGBMError, or anything its parser trips on
        raise ModelLoadError(
            f"{path}: not a loadable LightGBM model: {first_line(exc)}; {EXPECTED}"
        ) from None
    return booster, header


def _objective(booster: Any, header: Mapping[bytes, bytes]) -> str:
    """The objective the predictor applies: the model's ``objective=`` line, else params."""
    line = header.get(b"objective", b"").decode("utf-8", "replace").split()
    if line:
        return line[0]
    params = getattr(booster, "params", None) or {}
    return str(params.get("objective", "")) or "none"


class LightGBMRuntime:
    """One LightGBM Booster answering whole batches."""

    #: LightGBM predicts with OpenMP threads started from the caller.
    inline_safe = False
    pin_safe = False

    def __init__(
        self,
        booster: Any,
        input_spec: TensorSpec,
        kind: str,
        width: int,
        threads: int,
        floats: Mapping[str, str],
    ) -> None:
        self._booster = booster
        self._input = input_spec
        self._kind = kind
        self._threads = threads
        outputs: tuple[TensorSpec, ...]
        if kind == BINARY:
            outputs = class_outputs(floats, 2)
        elif kind == MULTICLASS:
            outputs = class_outputs(floats, width)
        else:
            outputs = (TensorSpec("predictions", floats["predictions"], (-1, width)),)
        self._native = ModelSignature(inputs=(input_spec,), outputs=outputs)
        self._specs = {s.name: s for s in outputs}
        self._dtypes = {s.name: DTYPES[s.datatype] for s in outputs}

    @property
    def native(self) -> ModelSignature:
        return self._native

    def raw(self, features: Array) -> Array:
        """LightGBM's default prediction (float64), one row per input row."""
        if features.dtype not in (np.float32, np.float64):
            # LightGBM reads float32 or float64; float64 holds every other type exactly.
            features = features.astype(np.float64)
        return np.asarray(self._booster.predict(features, num_threads=self._threads))

    def predict(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        x = feature_matrix(self._input, inputs)
        rows = x.shape[0]
        if rows == 0:
            return {n: empty_output(self._specs[n]) for n in outputs}
        raw = self.raw(x)
        result: dict[str, Array] = {}
        if self._kind in (BINARY, MULTICLASS):
            if self._kind == BINARY:
                p = raw.reshape(rows)
                probs = np.stack([1.0 - p, p], axis=1)
            else:
                probs = raw.reshape(rows, -1)
            # As LGBMClassifier.predict: argmax over the float64 probabilities.
            result["label"] = np.argmax(probs, axis=1).astype(np.int64).reshape(rows, 1)
            result["probabilities"] = probs
        else:
            result["predictions"] = raw.reshape(rows, -1)
        return {name: result[name].astype(self._dtypes[name], copy=False) for name in outputs}

    def unload(self) -> None:
        del self._booster


def load_lightgbm(version_dir: Path, config: ModelConfig, instances: int) -> LightGBMRuntime:
    """Load ``model.txt`` (or ``default_model_filename``) from a version directory."""
    filename = config.default_model_filename or MODEL_FILENAME
    path = version_file(version_dir, filename)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no {filename} in version directory")
    booster, header = _load_booster(path)
    features = int(booster.num_feature())
    if features < 1:
        raise ModelLoadError(f"{path}: the booster has no features")
    objective = _objective(booster, header)
    input_spec = feature_input_spec(path, config, features, "LightGBM")
    threads = thread_budget(config, instances)
    if objective == "binary":
        kind = BINARY
    elif objective in MULTICLASS_OBJECTIVES:
        kind = MULTICLASS
    else:
        kind = VALUE
    floats = float_output_types(config, "FP64")
    probe_runtime = LightGBMRuntime(booster, input_spec, kind, 1, threads, floats)
    try:
        # One row settles the output width (classes) from the model itself.
        probe = probe_runtime.raw(np.zeros((1, features), dtype=DTYPES[input_spec.datatype]))
    except Exception as exc:
        raise ModelLoadError(f"{path}: the booster cannot predict: {first_line(exc)}") from None
    width = max(1, probe.size)
    if kind == BINARY and width != 1:
        kind = VALUE
    if any(g.kind == "KIND_GPU" for g in config.instance_group):
        log.warning(
            "KIND_GPU requested but LightGBM predicts on the CPU only; predicting on the CPU",
            extra={"model": config.name, "device": "cpu"},
        )
    runtime = LightGBMRuntime(booster, input_spec, kind, width, threads, floats)
    log.info(
        "lightgbm booster ready",
        extra={
            "model": config.name,
            "path": str(path),
            "objective": objective,
            "features": features,
            "trees": int(booster.num_trees()),
            "num_threads": threads,
            "device": "cpu",
        },
    )
    return runtime
