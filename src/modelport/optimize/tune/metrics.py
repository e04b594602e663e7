"""Is a candidate as good as the original? One metric, one budget, one verdict.

The budget is a fraction (``--budget 0.5%`` and ``--budget 0.005`` are the
same). What it bounds depends on the metric:

- ``accuracy`` / ``auc`` with labels: the drop from the original's score,
  in absolute points (0.5% lets 0.9650 fall to 0.9600, not lower);
- ``accuracy`` without labels: the share of held-out rows whose top-1 class
  differs from the original's (agreement at least 1 - budget);
- ``rmse`` with labels: the rise over the original's RMSE, relative to it;
  without labels: the RMSE between candidate and original outputs, relative
  to the original outputs' root mean square;
- ``max_abs_diff``: the largest |candidate - original| over every float
  output, relative to the largest |original|.

Worked example: a classifier, no labels, budget 0.5%, 1,000 held-out rows:
a candidate whose top-1 class differs on 6 rows has agreement 0.994 and is
out (6 > 5); one that differs on 5 is in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from modelport.optimize.tune.errors import OptimizeFailed
from modelport.types import Array, ModelSignature

METRICS = ("accuracy", "auc", "rmse", "max_abs_diff")
DEFAULT_BUDGET = 0.005
_INTEGER_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32"})
_FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})


@dataclass(frozen=True)
class Judgement:
    """How one candidate scored against the original on the held-out rows."""

    metric: str
    """The metric as judged: accuracy, agreement, auc, rmse or max_abs_diff."""
    original: float | None
    """The original's own score (None when the metric compares against the original)."""
    candidate: float
    within: bool
    agreement: float | None
    """Share of rows with the original's top-1 class (classifiers), for the report."""
    max_abs_diff: float | None
    """Largest |candidate - original| over the float outputs, for the report."""
    why: str = ""
    """Why it is out of budget; empty when within."""


def parse_fraction(flag: str, text: str) -> float:
    """``0.5%`` → 0.005, ``0.005`` → 0.005; the caller checks the range."""
    raw = text.strip()
    try:
        return float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise OptimizeFailed(f"{flag}: expected a fraction or a percentage, got {text!r}") from None


def parse_budget(text: str) -> float:
    """``0.5%`` → 0.005, ``0.005`` → 0.005; a fraction in [0, 1)."""
    value = parse_fraction("--budget", text)
    if not (math.isfinite(value) and 0 <= value < 1):
        raise OptimizeFailed(f"--budget: must be at least 0 and below 100%, got {text!r}")
    return value


def is_classifier(signature: ModelSignature) -> bool:
    """An integer label output, or a float output of one score per class."""
    for spec in signature.outputs:
        if spec.datatype in _INTEGER_TYPES:
            return True
        if spec.datatype in _FLOAT_TYPES and len(spec.shape) == 2 and spec.shape[1] > 1:
            return True
    return False


def choose_metric(requested: str | None, signature: ModelSignature, has_labels: bool) -> str:
    """The metric to judge by; refuse one the model or the labels cannot support."""
    if requested is None:
        return "accuracy" if is_classifier(signature) else "rmse"
    if requested not in METRICS:
        raise OptimizeFailed(f"--metric: expected one of {', '.join(METRICS)}, got {requested!r}")
    if requested in ("accuracy", "auc") and not is_classifier(signature):
        raise OptimizeFailed(
            f"--metric {requested}: the model has no class output (an integer label, or one "
            "score per class); use rmse or max_abs_diff"
        )
    if requested == "auc" and not has_labels:
        raise OptimizeFailed("--metric auc needs --labels (true classes of the --data rows)")
    return requested


def top1(signature: ModelSignature, outputs: Mapping[str, Array]) -> Array:
    """Each row's predicted class: the label output, else the argmax of the class scores."""
    for spec in signature.outputs:
        if spec.datatype in _INTEGER_TYPES:
            labels = np.asarray(outputs[spec.name])
            return labels.reshape(labels.shape[0], -1)[:, 0]
    for spec in signature.outputs:
        if spec.datatype in _FLOAT_TYPES and len(spec.shape) == 2 and spec.shape[1] > 1:
            classes: Array = np.asarray(outputs[spec.name]).argmax(axis=1)
            return classes
    raise OptimizeFailed("the model has no class output to take a top-1 class from")


def _scores(signature: ModelSignature, outputs: Mapping[str, Array]) -> Array:
    """The positive class's score for AUC: column 1 of two, or the only column."""
    for spec in signature.outputs:
        if spec.datatype in _FLOAT_TYPES:
            values = np.asarray(outputs[spec.name], dtype=np.float64)
            values = values.reshape(values.shape[0], -1)
            if values.shape[1] <= 2:
                return values[:, -1]
    raise OptimizeFailed("--metric auc needs a binary classifier (one or two score columns)")


def _floats(signature: ModelSignature, outputs: Mapping[str, Array]) -> Array:
    parts = [
        np.asarray(outputs[s.name], dtype=np.float64).reshape(-1)
        for s in signature.outputs
        if s.datatype in _FLOAT_TYPES
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def roc_auc(labels: Array, scores: Array) -> float:
    """Area under the ROC curve by ranks (Mann-Whitney U), ties sharing their mean rank."""
    positive = labels == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise OptimizeFailed("--metric auc: the held-out labels hold only one class")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _rmse(a: Array, b: Array) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2))) if a.size else 0.0


def judge(
    metric: str,
    budget: float,
    signature: ModelSignature,
    original: Mapping[str, Array],
    candidate: Mapping[str, Array],
    labels: Array | None,
) -> Judgement:
    """Score ``candidate`` against ``original`` (and ``labels``) on the same held-out rows."""
    classifier = is_classifier(signature)
    agreement = (
        float(np.mean(top1(signature, candidate) == top1(signature, original)))
        if classifier
        else None
    )
    orig_f, cand_f = _floats(signature, original), _floats(signature, candidate)
    max_diff = float(np.max(np.abs(cand_f - orig_f))) if orig_f.size else None
    base = Judgement(metric, None, 0.0, True, agreement, max_diff)

    def verdict(name: str, orig: float | None, cand: float, ok: bool, why: str) -> Judgement:
        return Judgement(name, orig, cand, ok, agreement, max_diff, "" if ok else why)

    pct = f"{budget:.2%}"
    if metric == "accuracy" and labels is None:
        assert agreement is not None
        return verdict(
            "agreement",
            None,
            agreement,
            1 - agreement <= budget + 1e-12,
            f"top-1 agreement {agreement:.4f} with the original is below 1 - {pct}",
        )
    if metric in ("accuracy", "auc"):
        assert labels is not None
        if metric == "accuracy":
            orig = float(np.mean(top1(signature, original) == labels))
            cand = float(np.mean(top1(signature, candidate) == labels))
        else:
            orig = roc_auc(labels, _scores(signature, original))
            cand = roc_auc(labels, _scores(signature, candidate))
        return verdict(
            metric,
            orig,
            cand,
            orig - cand <= budget + 1e-12,
            f"{metric} {cand:.4f} dropped more than {pct} from the original's {orig:.4f}",
        )
    if metric == "rmse":
        if labels is not None:
            target = labels.astype(np.float64).reshape(-1)
            first = _first_float(signature)
            orig = _rmse(np.asarray(original[first], np.float64).reshape(-1), target)
            cand = _rmse(np.asarray(candidate[first], np.float64).reshape(-1), target)
            allowed = orig * (1 + budget) if orig > 0 else budget
            return verdict(
                "rmse",
                orig,
                cand,
                cand <= allowed + 1e-12,
                f"RMSE {cand:.4g} rose more than {pct} over the original's {orig:.4g}",
            )
        cand = _rmse(cand_f, orig_f)
        scale = float(np.sqrt(np.mean(orig_f**2))) if orig_f.size else 0.0
        return verdict(
            "rmse",
            None,
            cand,
            cand <= budget * scale + 1e-12,
            f"RMSE {cand:.4g} from the original's outputs exceeds {pct} of their scale "
            f"({scale:.4g})",
        )
    if max_diff is None:
        return base
    scale = float(np.max(np.abs(orig_f)))
    return verdict(
        "max_abs_diff",
        None,
        max_diff,
        max_diff <= budget * scale + 1e-12,
        f"max abs diff {max_diff:.4g} exceeds {pct} of the largest output ({scale:.4g})",
    )


def _first_float(signature: ModelSignature) -> str:
    for spec in signature.outputs:
        if spec.datatype in _FLOAT_TYPES:
            return spec.name
    raise OptimizeFailed("--metric rmse needs a float output")
