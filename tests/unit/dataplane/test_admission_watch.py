"""Anomaly wiring: the gate feeds the detectors; events become audit records and metrics."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import numpy as np

from modelport.config.model import parse_model_config
from modelport.dataplane.admission.audit import AuthAudit
from modelport.dataplane.admission.gate import Gate
from modelport.dataplane.admission.watch import DETECTOR, Tally, TrafficWatch, security_sink
from modelport.dataplane.pipeline import Pipeline
from modelport.dataplane.table import ModelVersion
from modelport.errors import Unauthenticated
from modelport.observability.anomaly import (
    AUTH_FAILURE_BURST,
    RATE_SPIKE,
    AuthFailureBurstDetector,
    RateSpikeDetector,
)
from modelport.observability.metrics import Metrics
from modelport.observability.profile import InputProfile, build_profile
from modelport.types import Identity, InferenceRequest, ModelSignature, Role, Tensor, TensorSpec
from tests.unit.dataplane.versions import scheduled_version

ALICE = Identity("key:a", "alice", Role.INVOKER, ("*",))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Authenticator:
    async def authenticate(
        self, header: str | None, peer: str, certificate: Any = None
    ) -> Identity:
        if header != "good":
            raise Unauthenticated("invalid API key")
        return ALICE


def _gate() -> tuple[Gate, Clock, AuthAudit, Metrics]:
    clock, metrics = Clock(), Metrics()
    audit = AuthAudit(None, clock=clock)
    sink = security_sink(audit, metrics)
    watch = TrafficWatch(
        RateSpikeDetector(sink, factor=5.0, floor=20, warmup_s=3, clock=clock),
        AuthFailureBurstDetector(sink, threshold=5, window_s=10.0, clock=clock),
    )
    gate = Gate(Authenticator(), lambda model: None, audit, watch)  # type: ignore[arg-type]
    return gate, clock, audit, metrics


def _admit(gate: Gate, header: str, peer: str = "10.0.0.9") -> None:
    async def run() -> None:
        with contextlib.suppress(Unauthenticated):
            await gate.admit(header, peer, Role.INVOKER, "m")

    asyncio.run(run())


def _security(audit: AuthAudit) -> list[Any]:
    return [e for e in audit.pending() if e.action.startswith("security.")]


def test_a_rate_spike_of_one_identity_is_audited_and_counted() -> None:
    gate, clock, audit, metrics = _gate()
    for _ in range(5):  # a steady 2 requests a second
        _admit(gate, "good")
        _admit(gate, "good")
        clock.now += 1.0
    assert _security(audit) == []
    for _ in range(30):  # then 30 in one second
        _admit(gate, "good")
    (event,) = _security(audit)
    assert (event.action, event.actor) == (RATE_SPIKE, DETECTOR)
    assert event.detail["source"] == "key:a"
    assert event.detail["requests_this_second"] == 20
    text = metrics.render().decode()
    assert 'modelport_security_events_total{kind="security.rate_spike"} 1.0' in text


def test_a_burst_of_failures_from_one_peer_is_audited_and_counted() -> None:
    gate, clock, audit, metrics = _gate()
    for _ in range(5):
        _admit(gate, "bad", "10.0.0.7")
        clock.now += 0.5
    assert _security(audit) == []
    _admit(gate, "bad", "10.0.0.7")
    (event,) = _security(audit)
    assert event.action == AUTH_FAILURE_BURST
    assert event.detail == {"source": "10.0.0.7", "failures": 6, "window_s": 10.0}
    text = metrics.render().decode()
    assert 'modelport_security_events_total{kind="security.auth_failure_burst"} 1.0' in text


def test_failures_spread_over_peers_raise_nothing() -> None:
    gate, _clock, audit, _metrics = _gate()
    for i in range(20):
        _admit(gate, "bad", f"10.0.0.{i}")
    assert _security(audit) == []


# ---------------------------------------------------------------- input profiles

SIGNATURE = ModelSignature(
    inputs=(TensorSpec("x", "FP32", (-1, 3)),),
    outputs=(TensorSpec("y", "FP32", (-1, 3)),),
    max_batch_size=8,
)


class Echo:
    native = SIGNATURE
    inline_safe = False
    pin_safe = False

    def predict(self, inputs: Any, outputs: Any) -> dict[str, Any]:
        return {"y": inputs["x"]}

    def unload(self) -> None:
        pass


class Table:
    def __init__(self, model: ModelVersion) -> None:
        self.model = model

    def acquire(self, name: str, version: str | None) -> ModelVersion:
        return self.model


def _profiled(profile: InputProfile | None) -> tuple[Pipeline, Metrics]:
    config = parse_model_config({"max_batch_size": 8}, "t")
    model = scheduled_version(Echo(), SIGNATURE, config, profile=profile)
    metrics = Metrics()
    return Pipeline(Table(model), metrics), metrics  # type: ignore[arg-type]


def _send(pipeline: Pipeline, rows: list[list[float]]) -> None:
    x = np.asarray(rows, np.float32)
    asyncio.run(
        pipeline.infer(InferenceRequest("m", None, [Tensor("x", "FP32", x.shape, x)]), "http")
    )


def _profile(tmp_path: Any) -> InputProfile:
    import json

    rng = np.random.default_rng(0)
    reference = {"x": rng.uniform(0, 1, (1000, 3)).astype(np.float32)}
    path = tmp_path / "reference_profile.json"
    path.write_text(json.dumps(build_profile(reference)))
    return InputProfile.load(path)


def test_out_of_profile_values_are_counted_per_feature(tmp_path: Any) -> None:
    pipeline, metrics = _profiled(_profile(tmp_path))
    _send(pipeline, [[0.5, 0.5, 0.5], [0.1, 0.9, 0.2]])
    assert "modelport_input_out_of_profile_total{" not in metrics.render().decode()
    _send(pipeline, [[0.5, 40.0, 0.5], [0.5, -30.0, 9.0]])
    text = metrics.render().decode()
    line = 'modelport_input_out_of_profile_total{{feature="{}",input="x",model="m",version="1"}}'
    assert line.format(1) + " 2.0" in text
    assert line.format(2) + " 1.0" in text
    assert line.format(0) not in text


def test_models_without_a_profile_count_nothing() -> None:
    pipeline, metrics = _profiled(None)
    _send(pipeline, [[1e9, 1e9, 1e9]])
    assert "modelport_input_out_of_profile_total{" not in metrics.render().decode()


def test_a_tally_hands_its_counts_over_once_and_the_detectors_see_them_whole() -> None:
    events: list[tuple[str, str, dict[str, Any]]] = []
    clock = Clock()

    def sink(kind: str, source: str, detail: dict[str, Any]) -> None:
        events.append((kind, source, detail))

    watch = TrafficWatch(
        RateSpikeDetector(sink, clock=clock), AuthFailureBurstDetector(sink, clock=clock)
    )
    # Two workers' tallies, each under the burst threshold (20 in 10 s) on its own.
    first, second = Tally(), Tally()
    for tally in (first, second):
        for _ in range(11):
            tally.failed("10.0.0.9")
        tally.admitted(ALICE)
    for tally in (first, second):
        admitted, failed = tally.take()
        assert (admitted, failed) == ({"key:a": 1}, {"10.0.0.9": 11})
        watch.feed(admitted, failed)
        assert tally.take() == ({}, {})
    assert [(kind, source) for kind, source, _ in events] == [(AUTH_FAILURE_BURST, "10.0.0.9")]
    assert events[0][2]["failures"] == 22


def test_a_tally_holds_a_bounded_number_of_sources() -> None:
    tally = Tally(max_sources=2)
    for peer in ("a", "b", "c", "a"):
        tally.failed(peer)
    assert tally.take()[1] == {"a": 2, "b": 1}
