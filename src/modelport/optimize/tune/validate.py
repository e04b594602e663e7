"""``modelport validate``: does a new version answer and run like the current one?

A pipeline runs it before deploying: both versions are loaded as the server
would load them, answer the same ``--data`` rows, and are timed the same
way; every stated threshold becomes one check. Any failed check is a
regression (exit 1), named with both figures, so the pipeline log says what
to look at.

- ``--max-diff``: largest |new - current| over the float outputs;
- ``--min-agreement``: share of rows with the same top-1 class (classifiers);
- ``--max-metric-drop`` with ``--labels``: the metric may fall at most this much;
- ``--max-latency-regression``: p50 at batch 1 may grow at most this fraction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelport.optimize.convert.source import Source, VersionPath, load_source, locate, read_config
from modelport.optimize.tune.data import load_samples, read_labels, read_samples
from modelport.optimize.tune.errors import OptimizeFailed
from modelport.optimize.tune.measure import Clock, predict_all, time_candidate
from modelport.optimize.tune.metrics import choose_metric, is_classifier, judge, top1


@dataclass(frozen=True)
class ValidateOptions:
    """Thresholds; None leaves a check out."""

    path: Path
    data: Path
    expect: str
    """The current version: a number (a sibling version) or a version directory."""
    max_diff: float | None = None
    min_agreement: float | None = 0.99
    max_latency_regression: float | None = 0.2
    labels: Path | None = None
    metric: str | None = None
    max_metric_drop: float | None = None
    seconds: float = 0.5


@dataclass(frozen=True)
class Check:
    """One threshold and how the new version fared."""

    name: str
    current: float | None
    new: float
    threshold: str
    ok: bool


@dataclass
class ValidateReport:
    new: VersionPath
    current: VersionPath
    rows: int
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def regressions(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def _expected(new: VersionPath, expect: str) -> VersionPath:
    if expect.isdigit():
        return locate(new.model_dir / expect)
    return locate(Path(expect))


def _load(where: VersionPath) -> Source:
    model, config, origin = read_config(where)
    return load_source(where, model, config, origin)


def validate_version(options: ValidateOptions, clock: Clock = time.perf_counter) -> ValidateReport:
    """Compare the new version with the current one; the report holds every check."""
    for flag, value in (
        ("--max-diff", options.max_diff),
        ("--max-latency-regression", options.max_latency_regression),
        ("--max-metric-drop", options.max_metric_drop),
    ):
        if value is not None and not (np.isfinite(value) and value >= 0):
            raise OptimizeFailed(f"{flag}: must be a number >= 0, got {value}")
    if options.min_agreement is not None and not 0 <= options.min_agreement <= 1:
        raise OptimizeFailed(
            f"--min-agreement: must be between 0 and 1, got {options.min_agreement}"
        )
    new_at = locate(options.path)
    current_at = _expected(new_at, options.expect)
    if current_at == new_at:
        raise OptimizeFailed(f"--expect {options.expect}: is the version being validated")
    raw = read_samples(options.data)
    new = _load(new_at)
    try:
        current = _load(current_at)
    except Exception:
        new.runtime.unload()
        raise
    try:
        signature = new.signature
        samples = load_samples(options.data, raw, signature)
        labels = read_labels(options.labels, samples.rows) if options.labels else None
        names = [s.name for s in signature.outputs]
        missing = [n for n in names if n not in {s.name for s in current.signature.outputs}]
        if missing:
            raise OptimizeFailed(
                f"{current_at.version_dir}: has no output {', '.join(missing)}; the versions' "
                "signatures differ"
            )
        batch = min(signature.max_batch_size, current.signature.max_batch_size)
        batch = batch if batch > 0 else signature.max_batch_size
        new_out = predict_all(new.runtime.predict, samples.arrays, names, batch)
        cur_out = predict_all(current.runtime.predict, samples.arrays, names, batch)
        report = ValidateReport(new_at, current_at, samples.rows)
        verdict = judge("max_abs_diff", 0.0, signature, cur_out, new_out, None)
        if options.max_diff is not None and verdict.max_abs_diff is not None:
            report.checks.append(
                Check(
                    "max_abs_diff",
                    None,
                    verdict.max_abs_diff,
                    f"<= {options.max_diff:g}",
                    verdict.max_abs_diff <= options.max_diff,
                )
            )
        if options.min_agreement is not None and is_classifier(signature):
            agreement = float(np.mean(top1(signature, new_out) == top1(signature, cur_out)))
            report.checks.append(
                Check(
                    "top1_agreement",
                    None,
                    agreement,
                    f">= {options.min_agreement:g}",
                    agreement >= options.min_agreement,
                )
            )
        if labels is not None and options.max_metric_drop is not None:
            metric = choose_metric(options.metric, signature, True)
            j = judge(metric, options.max_metric_drop, signature, cur_out, new_out, labels)
            report.checks.append(
                Check(
                    j.metric,
                    j.original,
                    j.candidate,
                    f"drop <= {options.max_metric_drop:g}",
                    j.within,
                )
            )
        if options.max_latency_regression is not None:
            one = [names[0]] if names else []
            t_cur = time_candidate(
                current.runtime.predict, samples.arrays, one, 0, [1], options.seconds, clock
            )
            t_new = time_candidate(
                new.runtime.predict, samples.arrays, one, 0, [1], options.seconds, clock
            )
            limit = t_cur.p50_ms * (1 + options.max_latency_regression)
            report.checks.append(
                Check(
                    "p50_latency_ms",
                    t_cur.p50_ms,
                    t_new.p50_ms,
                    f"<= {limit:.3f} (+{options.max_latency_regression:.0%})",
                    t_new.p50_ms <= limit,
                )
            )
        return report
    finally:
        new.runtime.unload()
        current.runtime.unload()
