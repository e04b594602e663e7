"""A canary's pure decisions: a step's policy, its next move, what undoes the canary.

Both are functions of the canary's stored progress, the windows the data
plane keeps and the time, so the rules are tested without a server, sockets
or sleeps; ``CanaryController`` only reads the windows and acts on the answer.

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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from modelport.controlplane.traffic import RestorePoint
from modelport.dataplane.routing import Route, Shadow, TrafficPolicy, WindowSnapshot

#: Without ``evidence_timeout_s`` in the spec, a step waits this many intervals.
EVIDENCE_INTERVALS = 5.0

Action = Literal["hold", "advance", "promote", "rollback", "abort"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the controller does now; ``reason`` says why for rollback and abort."""

    action: Action
    reason: str | None = None


def evidence_timeout(body: Mapping[str, Any]) -> float:
    """Seconds a step may run short of evidence (canaries stored before the
    field existed get the default)."""
    given = body.get("evidence_timeout_s")
    if given is None:
        return EVIDENCE_INTERVALS * float(body["interval_s"])
    return float(given)


def compares(body: Mapping[str, Any]) -> bool:
    """Whether the canary has an agreement SLO, and so shadows to compare answers."""
    return body["slo"].get("min_agreement") is not None


def step_policy(body: Mapping[str, Any], sticky_key: str | None) -> TrafficPolicy:
    """The traffic policy for the canary's current step.

    With an agreement SLO every answer from one version is shadowed to the
    other and the outputs compared: while stable answers (steps below 100 %),
    the candidate gets the copies and its window counts the comparisons; at
    100 % stable gets them, so the last step is judged on agreement too.
    Answers the shadow version gave itself are never copied.
    """
    weight = int(body["weight"])
    candidate, stable = body["version"], body["stable"]
    routes = [Route(stable, 100 - weight), Route(candidate, weight)]
    kept = tuple(r for r in routes if r.weight > 0)
    shadow = None
    if compares(body):
        shadow = Shadow(candidate if weight < 100 else stable, 1.0)
    return TrafficPolicy(routes=kept, sticky_key=sticky_key, shadow=shadow)


def comparison_version(body: Mapping[str, Any]) -> str:
    """The version whose window counts this step's comparisons (see step_policy)."""
    return str(body["version"] if int(body["weight"]) < 100 else body["stable"])


def judge_step(
    body: Mapping[str, Any],
    candidate: WindowSnapshot,
    comparisons: WindowSnapshot,
    now: float,
    window_s: float,
) -> Verdict:
    """Decide a running canary's next move.

    ``candidate`` is the candidate's window, ``comparisons`` the window of
    :func:`comparison_version`; both were reset when the step began.
    ``window_s`` is how far back a window sees, for the abort's wording.
    """
    step, weight = int(body["step"]), int(body["weight"])
    min_requests = int(body["min_requests"])
    slo = body["slo"]
    where = f"at step {step + 1} ({weight}%)"
    if candidate.requests >= min_requests:
        limit = slo.get("max_error_rate")
        rate = candidate.error_rate
        if limit is not None and rate is not None and rate > limit:
            return Verdict(
                "rollback",
                f"error rate {rate:.3f} > {limit} over {candidate.requests} requests {where}",
            )
        limit = slo.get("max_p99_ms")
        p99 = candidate.p99_ms
        if limit is not None and p99 is not None and p99 > limit:
            return Verdict("rollback", f"p99 latency {p99:.1f} ms > {limit} ms {where}")
    min_agreement = slo.get("min_agreement")
    compared, agreement = comparisons.shadow_compared, comparisons.agreement
    if (
        min_agreement is not None
        and compared >= min_requests
        and agreement is not None
        and agreement < min_agreement
    ):
        return Verdict(
            "rollback",
            f"shadow agreement {agreement:.3f} < {min_agreement} over "
            f"{compared} comparisons {where}",
        )
    elapsed = now - float(body["step_started_at"])
    if elapsed < float(body["interval_s"]):
        return Verdict("hold")
    short: list[str] = []
    if candidate.requests < min_requests:
        short.append(
            f"only {candidate.requests} of min_requests {min_requests} requests "
            "reached the candidate"
        )
    if min_agreement is not None and compared < min_requests:
        short.append(
            f"only {compared} of min_requests {min_requests} answers were compared "
            f"with version {body['stable']}"
        )
    if not short:
        last = step + 1 >= len(body["steps"])
        return Verdict("promote" if last else "advance")
    if elapsed < evidence_timeout(body):
        return Verdict("hold")
    seen = min(elapsed, window_s)
    return Verdict("abort", f"step {step + 1}: {' and '.join(short)} in {seen:.1f} s")


def restore_point(body: Mapping[str, Any], state: str, revision: int) -> RestorePoint | None:
    """What rolling back policy ``revision`` puts back, when the canary (progress
    ``body``, in ``state``) finished by writing it: the policy in force before
    the canary began.

    The revision just before is the canary's own last step, so restoring it
    would change nothing. Only a finished canary has a ``policy_revision``.
    """
    if body.get("policy_revision") != revision or "policy_before" not in body:
        return None
    before = body["policy_before"]
    what = f"the canary of version {body['version']} ({state})"
    if before is None:
        stable = body["stable"]
        policy = TrafficPolicy(routes=(Route(stable, 100),))
        return RestorePoint(
            policy.to_body(),
            f"no policy was in force before {what}; all traffic to its stable version {stable}",
        )
    return RestorePoint(
        before["policy"],
        f"restores revision {before['revision']}, the policy in force before {what}",
    )
