"""The pipeline with a traffic policy: splits, stickiness, fallback, shadow copies, windows."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pytest

from modelport.config.model import parse_model_config
from modelport.dataplane.pipeline import Pipeline
from modelport.dataplane.routing import Route, Shadow, Traffic, TrafficPolicy, choose_version
from modelport.dataplane.scheduled import ScheduledServable
from modelport.dataplane.scheduling.scheduler import Execution
from modelport.dataplane.table import ModelVersion
from modelport.errors import InferenceFailed, InvalidRequest, ModelNotReady, NotFound
from modelport.observability.metrics import Metrics
from modelport.observability.statistics import ModelStatistics
from modelport.types import InferenceRequest, ModelSignature, RequestedOutput, Tensor, TensorSpec

SIGNATURE = ModelSignature(
    inputs=(TensorSpec("a", "FP32", (-1, 2)), TensorSpec("b", "FP32", (-1, 2))),
    outputs=(TensorSpec("sum", "FP32", (-1, 2)), TensorSpec("diff", "FP32", (-1, 2))),
    max_batch_size=4,
)

Compute = Callable[[dict[str, Any]], dict[str, Any]]


def _exact(f: dict[str, Any]) -> dict[str, Any]:
    return {"sum": f["a"] + f["b"], "diff": f["a"] - f["b"]}


def _close(f: dict[str, Any]) -> dict[str, Any]:  # last-bit float noise: still agrees
    return {"sum": f["a"] + f["b"] + 1e-7, "diff": f["a"] - f["b"]}


def _wrong(f: dict[str, Any]) -> dict[str, Any]:
    return {"sum": f["a"] * f["b"], "diff": f["a"] - f["b"]}


def _fails(f: dict[str, Any]) -> dict[str, Any]:
    raise InferenceFailed("model failed: boom")


class FakeScheduler:
    """Answers like a Scheduler; ``compute=None`` means it never answers."""

    def __init__(self, compute: Compute | None) -> None:
        self.compute = compute
        self.calls = 0
        self.hanging = asyncio.Event()

    async def submit(
        self,
        inputs: dict[str, Any],
        outputs: Sequence[str],
        rows: int,
        priority: int = 0,
        timeout_us: int | None = None,
        group: Any = None,
        deadline_ns: int | None = None,
    ) -> Execution:
        self.calls += 1
        if self.compute is None:
            self.hanging.set()
            await asyncio.Event().wait()  # hangs until cancelled
        assert self.compute is not None
        result = self.compute(inputs)
        return Execution({n: result[n] for n in outputs}, 0, 0, 0, 0, rows)


class Table:
    """Versions 1 and 2 ready (2 is the default), plus whatever a test adds."""

    def __init__(self, versions: dict[str, Compute | None]) -> None:
        self.models: dict[str, ModelVersion] = {}
        self.cold: set[str] = set()
        config = parse_model_config({"max_batch_size": 4}, "m")
        for v, compute in versions.items():
            self.models[v] = ModelVersion(
                "m",
                v,
                "fake",
                SIGNATURE,
                config,
                ScheduledServable(FakeScheduler(compute), "m", v, SIGNATURE),  # type: ignore[arg-type]
                ModelStatistics(),
            )

    def acquire(self, name: str, version: str | None) -> ModelVersion:
        if name != "m":
            raise NotFound(f"unknown model {name!r}")
        if version is None:
            return self.models["2"]
        if version in self.cold:
            raise ModelNotReady(f"model 'm' version {version} is not ready: loading")
        if version not in self.models:
            raise NotFound(f"unknown version {version!r} of model 'm'")
        return self.models[version]

    def versions(self, name: str) -> list[str]:
        return sorted(self.models)

    def ready(self) -> list[ModelVersion]:
        return list(self.models.values())

    def is_ready(self) -> bool:
        return True

    def scheduler(self, version: str) -> FakeScheduler:
        return self.models[version].servable.scheduler  # type: ignore[attr-defined,no-any-return]

    def calls(self, version: str) -> int:
        return self.scheduler(version).calls


class Draws:
    """A scripted rand(): the policy's draws, in order."""

    def __init__(self, values: Iterable[float] = ()) -> None:
        self.values = list(values)

    def __call__(self) -> float:
        if not self.values:
            raise AssertionError("rand() called more often than the test expected")
        return self.values.pop(0)


class Setup:
    def __init__(self, draws: Iterable[float] = (), **traffic: Any) -> None:
        self.table = Table(
            {"1": _exact, "2": _exact, "3": _close, "4": _wrong, "5": _fails, "6": None}
        )
        self.metrics = Metrics()
        self.draws = Draws(draws)
        self.traffic = Traffic(self.metrics, rand=self.draws, **traffic)
        self.pipeline = Pipeline(self.table, self.metrics, traffic=self.traffic)

    def policy(self, routes: dict[str, int], **kw: Any) -> None:
        self.traffic.set("m", TrafficPolicy(tuple(Route(v, w) for v, w in routes.items()), **kw))

    def metric(self, name: str, **labels: str) -> float | None:
        value = self.metrics.registry.get_sample_value(name, labels)
        return value

    def shadow_count(self, version: str, result: str) -> float | None:
        return self.metric(
            "modelport_shadow_requests_total", model="m", version=version, result=result
        )


def _request(
    version: str | None = None,
    outputs: list[str] | None = None,
    parameters: dict[str, Any] | None = None,
) -> InferenceRequest:
    a = np.asarray([[1, 2], [3, 4]], np.float32)
    b = np.asarray([[1, 1], [2, 2]], np.float32)
    return InferenceRequest(
        "m",
        version,
        [Tensor("a", "FP32", a.shape, a), Tensor("b", "FP32", b.shape, b)],
        outputs=[RequestedOutput(n) for n in outputs] if outputs is not None else None,
        id="r1",
        parameters=parameters or {},
    )


def _no_header(name: str) -> str | None:
    raise AssertionError("the header lookup is only for sticky keys")


def _run(setup: Setup, scenario: Callable[[], Any]) -> None:
    async def main() -> None:
        try:
            await scenario()
        finally:
            await setup.traffic.close()

    asyncio.run(main())


def test_requests_without_a_version_follow_the_policy() -> None:
    s = Setup(draws=[0.5, 0.95, 0.89, 0.9])
    s.policy({"1": 90, "2": 10})

    async def scenario() -> None:
        answered = [
            (await s.pipeline.infer(_request(), "http", _no_header)).model_version for _ in range(4)
        ]
        assert answered == ["1", "2", "1", "2"]

    _run(s, scenario)
    assert (
        s.metric("modelport_inference_requests_total", model="m", version="1", protocol="http") == 2
    )
    assert s.traffic.window("m", "1").requests == 2
    assert s.traffic.window("m", "2").requests == 2


def test_naming_a_version_bypasses_the_policy_but_is_recorded() -> None:
    s = Setup()  # no draws: the policy must not be consulted
    s.policy({"1": 100})

    async def scenario() -> None:
        resp = await s.pipeline.infer(_request("2"), "grpc")
        assert resp.model_version == "2"
        np.testing.assert_array_equal(resp.outputs[0].data, [[2, 3], [5, 6]])

    _run(s, scenario)
    assert s.table.calls("1") == 0
    assert s.traffic.window("m", "2").requests == 1


def test_models_without_a_policy_are_untouched() -> None:
    s = Setup()

    async def scenario() -> None:
        assert (await s.pipeline.infer(_request(), "http", _no_header)).model_version == "2"
        assert (await s.pipeline.infer(_request("1"), "http")).model_version == "1"

    _run(s, scenario)
    assert s.traffic.window("m", "2").requests == 0


def test_sticky_key_from_a_header() -> None:
    s = Setup()  # a sticky caller never draws
    s.policy({"1": 50, "2": 50}, sticky_key="X-User")
    policy = s.traffic.get("m")
    assert policy is not None
    asked: list[str] = []
    users = [f"user-{i}" for i in range(40)]

    async def scenario() -> None:
        for user in users:
            for _ in range(3):

                def header(name: str, user: str = user) -> str | None:
                    asked.append(name)
                    return user

                resp = await s.pipeline.infer(_request(), "http", header)
                assert resp.model_version == choose_version("m", policy, user, s.draws)

    _run(s, scenario)
    assert set(asked) == {"X-User"}
    assert s.traffic.window("m", "1").requests > 0
    assert s.traffic.window("m", "2").requests > 0


def test_sticky_key_from_a_parameter_when_no_header_has_it() -> None:
    s = Setup()
    s.policy({"1": 50, "2": 50}, sticky_key="user")
    policy = s.traffic.get("m")
    assert policy is not None

    async def scenario() -> None:
        for i in range(20):
            req = _request(parameters={"user": i})
            resp = await s.pipeline.infer(req, "grpc", lambda name: None)
            assert resp.model_version == choose_version("m", policy, str(i), s.draws)
        # No transport header lookup at all (an in-process caller) works the same.
        resp = await s.pipeline.infer(_request(parameters={"user": 7}), "http")
        assert resp.model_version == choose_version("m", policy, "7", s.draws)

    _run(s, scenario)


def test_sticky_model_without_a_key_value_draws_at_random() -> None:
    s = Setup(draws=[0.1, 0.9])
    s.policy({"1": 50, "2": 50}, sticky_key="user")

    async def scenario() -> None:
        first = await s.pipeline.infer(_request(), "http", lambda name: None)
        second = await s.pipeline.infer(_request(), "http", lambda name: None)
        assert (first.model_version, second.model_version) == ("1", "2")

    _run(s, scenario)


def test_a_routed_version_that_cannot_serve_falls_back_to_the_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = Setup(draws=[0.0] * 6)
    s.policy({"9": 100})  # no such version
    s.table.cold.add("1")

    async def scenario() -> None:
        for _ in range(3):
            assert (await s.pipeline.infer(_request(), "http")).model_version == "2"
        s.policy({"1": 100})  # exists but is loading
        for _ in range(3):
            assert (await s.pipeline.infer(_request(), "http")).model_version == "2"

    with caplog.at_level(logging.WARNING, logger="modelport.routing"):
        _run(s, scenario)
    assert s.metric("modelport_routing_fallbacks_total", model="m", version="9") == 3
    assert s.metric("modelport_routing_fallbacks_total", model="m", version="1") == 3
    warnings = [r for r in caplog.records if r.name == "modelport.routing"]
    assert [getattr(r, "version", None) for r in warnings] == ["9", "1"]  # once per version
    assert s.traffic.window("m", "2").requests == 6
    assert s.traffic.window("m", "1").requests == 0


def test_windows_count_server_failures_not_client_mistakes() -> None:
    s = Setup(draws=[0.0, 0.0])
    s.policy({"5": 100})
    s.table.cold.add("3")

    async def scenario() -> None:
        with pytest.raises(InferenceFailed):
            await s.pipeline.infer(_request(), "http")
        with pytest.raises(InvalidRequest):
            await s.pipeline.infer(_request(outputs=["nope"]), "http")
        with pytest.raises(ModelNotReady):
            await s.pipeline.infer(_request("3"), "http")
        with pytest.raises(NotFound):
            await s.pipeline.infer(_request("77"), "http")

    _run(s, scenario)
    five = s.traffic.window("m", "5")
    assert (five.requests, five.errors, five.error_rate) == (1, 1, 1.0)
    assert s.traffic.window("m", "3").errors == 1
    assert s.traffic.window("m", "77").requests == 0


def test_shadow_copy_runs_after_the_answer_and_agrees() -> None:
    s = Setup(draws=[0.0, 0.0])  # route, then shadow draw (< fraction)
    s.policy({"1": 100}, shadow=Shadow("3", 0.5))

    async def scenario() -> None:
        resp = await s.pipeline.infer(_request(outputs=["sum"]), "http")
        assert resp.model_version == "1"
        assert [t.name for t in resp.outputs] == ["sum"]
        assert s.traffic.shadows.in_flight("m") == 1
        assert s.table.calls("3") == 0  # the caller had its answer first
        await s.traffic.shadows.wait()

    _run(s, scenario)
    assert s.table.calls("3") == 1
    assert s.shadow_count("3", "agree") == 1
    assert (
        s.metric("modelport_inference_requests_total", model="m", version="3", protocol="shadow")
        == 1
    )
    three = s.traffic.window("m", "3")
    assert (three.requests, three.shadow_compared, three.shadow_agreed) == (1, 1, 1)
    assert three.agreement == 1.0


def test_shadow_disagreement_is_counted() -> None:
    s = Setup(draws=[0.0, 0.0, 0.0, 0.99])
    s.policy({"1": 100}, shadow=Shadow("4", 0.5))

    async def scenario() -> None:
        await s.pipeline.infer(_request(), "http")
        await s.pipeline.infer(_request(), "http")  # draw 0.99: not shadowed
        await s.traffic.shadows.wait()

    _run(s, scenario)
    assert s.table.calls("4") == 1
    assert s.shadow_count("4", "disagree") == 1
    four = s.traffic.window("m", "4")
    assert (four.shadow_compared, four.shadow_agreed, four.agreement) == (1, 0, 0.0)


def test_a_failing_shadow_never_reaches_the_caller() -> None:
    s = Setup(draws=[0.0, 0.0])
    s.policy({"1": 100}, shadow=Shadow("5", 1.0))

    async def scenario() -> None:
        resp = await s.pipeline.infer(_request(), "http")
        np.testing.assert_array_equal(resp.outputs[0].data, [[2, 3], [5, 6]])
        await s.traffic.shadows.wait()

    _run(s, scenario)
    assert s.shadow_count("5", "error") == 1
    assert s.traffic.window("m", "5").errors == 1


def test_a_missing_shadow_version_is_an_error_not_a_failure() -> None:
    s = Setup(draws=[0.0, 0.0])
    s.policy({"1": 100}, shadow=Shadow("9", 1.0))

    async def scenario() -> None:
        assert (await s.pipeline.infer(_request(), "http")).model_version == "1"
        await s.traffic.shadows.wait()

    _run(s, scenario)
    assert s.shadow_count("9", "error") == 1


def test_a_hanging_shadow_does_not_hold_the_caller_and_is_cancelled_on_close() -> None:
    s = Setup(draws=[0.0, 0.0])
    s.policy({"1": 100}, shadow=Shadow("6", 1.0))

    async def scenario() -> None:
        resp = await s.pipeline.infer(_request(), "http")
        assert resp.model_version == "1"
        await s.table.scheduler("6").hanging.wait()  # the shadow is stuck in its scheduler
        assert s.traffic.shadows.in_flight("m") == 1
        await s.traffic.close()
        assert s.traffic.shadows.in_flight("m") == 0

    _run(s, scenario)


def test_a_hanging_shadow_times_out_as_an_error() -> None:
    s = Setup(draws=[0.0, 0.0], shadow_timeout_s=0.0)  # expires at the next loop turn
    s.policy({"1": 100}, shadow=Shadow("6", 1.0))

    async def scenario() -> None:
        await s.pipeline.infer(_request(), "http")
        await s.traffic.shadows.wait()

    _run(s, scenario)
    assert s.shadow_count("6", "error") == 1
    assert s.traffic.window("m", "6").errors == 1


def test_shadow_copies_beyond_the_limit_are_skipped() -> None:
    s = Setup(draws=[0.0] * 8, shadow_limit=2)
    s.policy({"1": 100}, shadow=Shadow("6", 1.0))

    async def scenario() -> None:
        for _ in range(4):
            assert (await s.pipeline.infer(_request(), "http")).model_version == "1"
        assert s.traffic.shadows.in_flight("m") == 2

    _run(s, scenario)
    assert s.shadow_count("6", "skipped") == 2
    assert s.traffic.shadows.in_flight("m") == 0


def test_no_shadow_for_the_shadow_versions_own_answers_or_named_versions() -> None:
    s = Setup(draws=[0.0])  # one draw: choosing the route; no shadow draw follows
    s.policy({"3": 100}, shadow=Shadow("3", 1.0))

    async def scenario() -> None:
        assert (await s.pipeline.infer(_request(), "http")).model_version == "3"
        s.policy({"1": 100}, shadow=Shadow("3", 1.0))
        assert (await s.pipeline.infer(_request("1"), "http")).model_version == "1"
        assert s.traffic.shadows.in_flight("m") == 0

    _run(s, scenario)
    assert s.table.calls("3") == 1


class Recorder:
    """An observer that records which requests it saw."""

    def __init__(self, routed_only: bool) -> None:
        self.routed_only = routed_only
        self.seen: list[str | None] = []

    def applies(self, model: ModelVersion) -> bool:
        return True

    def observe(self, call: Any, request: InferenceRequest, served: Any) -> None:
        self.seen.append(request.model_version)


def test_observers_of_routed_requests_only_are_left_out_of_the_rest() -> None:
    """A model without a traffic policy never pays for the canary and shadow observers."""
    setup = Setup(draws=[0.1])
    every, routed = Recorder(routed_only=False), Recorder(routed_only=True)
    setup.pipeline = Pipeline(
        setup.table, setup.metrics, traffic=setup.traffic, observers=(every, routed)
    )

    async def scenario() -> None:
        await setup.pipeline.infer(_request(), "http", _no_header)  # no policy yet
        setup.policy({"1": 100})
        await setup.pipeline.infer(_request(), "http", _no_header)  # routed by the policy

    _run(setup, scenario)
    assert len(every.seen) == 2
    assert len(routed.seen) == 1
