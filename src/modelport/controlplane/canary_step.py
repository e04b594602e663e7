"""A canary's pure decisions: a step's policy, its next move, what undoes the canary.

Each is a function of the canary's spec and progress (``canary_spec``), the
figures of the windows the data plane keeps (``StepWindow``) and the wall
time, so the rules are tested without a server, sockets or sleeps;
``CanaryController`` only reads the windows, the clock and the store, and acts
on the answer.

A step moves on only on evidence. Its interval must be over, the candidate's
window must hold at least ``min_requests`` requests and, with an agreement
SLO, at least ``min_requests`` comparisons with the stable version. Without
that evidence the step holds, and a step still short of it
``evidence_timeout_s`` seconds after it began aborts the canary: a candidate
nobody used has not shown that it works.

Worked example: steps [10, 100], interval_s 60, min_requests 20,
evidence_timeout_s 300. At 70 s the window has 12 requests: hold. At 300 s it
still has 12: abort, "step 1: only 12 of min_requests 20 requests reached the
candidate in 60.0 s" (the window holds the last 60 s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from modelport.controlplane.canary_spec import CanaryProgress, CanarySpec
from modelport.controlplane.traffic import RestorePoint
from modelport.dataplane.routing import Route, Shadow, TrafficPolicy, WindowSnapshot

#: Without ``evidence_timeout_s`` in the spec, a step waits this many intervals.
EVIDENCE_INTERVALS = 5.0

Action = Literal["hold", "advance", "promote", "rollback", "abort"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What the controller does now; ``reason`` says why for rollback and abort."""

    action: Action
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class StepWindow:
    """The figures a step is judged on, from windows reset when the step began.

    ``requests``, ``error_rate`` and ``p99_ms`` are the candidate's;
    ``compared`` and ``agreement`` come from the window of
    :func:`comparison_version`, which counts the step's shadow comparisons.
    """

    span_s: float
    """How far back a window sees, for the abort's wording."""
    requests: int = 0
    error_rate: float | None = None
    p99_ms: float | None = None
    compared: int = 0
    agreement: float | None = None

    @classmethod
    def of(
        cls, candidate: WindowSnapshot, comparisons: WindowSnapshot, span_s: float
    ) -> StepWindow:
        return cls(
            span_s=span_s,
            requests=candidate.requests,
            error_rate=candidate.error_rate,
            p99_ms=candidate.p99_ms,
            compared=comparisons.shadow_compared,
            agreement=comparisons.agreement,
        )


def evidence_timeout(spec: CanarySpec) -> float:
    """Seconds a step may run short of evidence (canaries stored before the
    field existed get the default)."""
    if spec.evidence_timeout_s is None:
        return EVIDENCE_INTERVALS * spec.interval_s
    return spec.evidence_timeout_s


def compares(spec: CanarySpec) -> bool:
    """Whether the canary has an agreement SLO, and so shadows to compare answers."""
    return spec.slo.min_agreement is not None


def step_policy(
    spec: CanarySpec, progress: CanaryProgress, sticky_key: str | None
) -> TrafficPolicy:
    """The traffic policy for the canary's current step.

    With an agreement SLO every answer from one version is shadowed to the
    other and the outputs compared: while stable answers (steps below 100 %),
    the candidate gets the copies and its window counts the comparisons; at
    100 % stable gets them, so the last step is judged on agreement too.
    Answers the shadow version gave itself are never copied.
    """
    weight = progress.weight(spec)
    candidate, stable = spec.version, spec.stable_version
    routes = [Route(stable, 100 - weight), Route(candidate, weight)]
    kept = tuple(r for r in routes if r.weight > 0)
    shadow = None
    if compares(spec):
        shadow = Shadow(candidate if weight < 100 else stable, 1.0)
    return TrafficPolicy(routes=kept, sticky_key=sticky_key, shadow=shadow)


def comparison_version(spec: CanarySpec, progress: CanaryProgress) -> str:
    """The version whose window counts this step's comparisons (see step_policy)."""
    return spec.version if progress.weight(spec) < 100 else spec.stable_version


def judge_step(
    spec: CanarySpec, progress: CanaryProgress, window: StepWindow, now: float
) -> Decision:
    """Decide a running canary's next move at wall time ``now``."""
    step, weight = progress.step, progress.weight(spec)
    min_requests = spec.min_requests
    slo = spec.slo
    where = f"at step {step + 1} ({weight}%)"
    if window.requests >= min_requests:
        limit = slo.max_error_rate
        rate = window.error_rate
        if limit is not None and rate is not None and rate > limit:
            return Decision(
                "rollback",
                f"error rate {rate:.3f} > {limit} over {window.requests} requests {where}",
            )
        limit = slo.max_p99_ms
        p99 = window.p99_ms
        if limit is not None and p99 is not None and p99 > limit:
            return Decision("rollback", f"p99 latency {p99:.1f} ms > {limit} ms {where}")
    min_agreement = slo.min_agreement
    compared, agreement = window.compared, window.agreement
    if (
        min_agreement is not None
        and compared >= min_requests
        and agreement is not None
        and agreement < min_agreement
    ):
        return Decision(
            "rollback",
            f"shadow agreement {agreement:.3f} < {min_agreement} over "
            f"{compared} comparisons {where}",
        )
    elapsed = now - progress.step_started_at
    if elapsed < spec.interval_s:
        return Decision("hold")
    short: list[str] = []
    if window.requests < min_requests:
        short.append(
            f"only {window.requests} of min_requests {min_requests} requests reached the candidate"
        )
    if min_agreement is not None and compared < min_requests:
        short.append(
            f"only {compared} of min_requests {min_requests} answers were compared "
            f"with version {spec.stable_version}"
        )
    if not short:
        last = step + 1 >= len(spec.steps)
        return Decision("promote" if last else "advance")
    if elapsed < evidence_timeout(spec):
        return Decision("hold")
    seen = min(elapsed, window.span_s)
    return Decision("abort", f"step {step + 1}: {' and '.join(short)} in {seen:.1f} s")


def restore_point(spec: CanarySpec, progress: CanaryProgress, revision: int) -> RestorePoint | None:
    """What rolling back policy ``revision`` puts back, when the canary finished
    by writing it: the policy in force before the canary began.

    The revision just before is the canary's own last step, so restoring it
    would change nothing. Only a finished canary has a ``policy_revision``.
    """
    before = progress.policy_before
    if progress.policy_revision != revision or before is None:
        return None
    what = f"the canary of version {spec.version} ({progress.state})"
    if before.policy is None:
        stable = spec.stable_version
        policy = TrafficPolicy(routes=(Route(stable, 100),))
        return RestorePoint(
            policy.to_body(),
            f"no policy was in force before {what}; all traffic to its stable version {stable}",
        )
    return RestorePoint(
        before.policy,
        f"restores revision {before.revision}, the policy in force before {what}",
    )
