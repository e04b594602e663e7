"""Data residency: the matching rules, the header and tenant sources, and the pipeline hook."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from modelport.config.model import parse_model_config
from modelport.config.server import load_server_config
from modelport.dataplane.admission.audit import AuthAudit
from modelport.dataplane.admission.residency import (
    RESIDENCY_REFUSED,
    ResidencyGuard,
    data_refusal,
    model_refusal,
    parse_residency,
)
from modelport.dataplane.pipeline import Pipeline
from modelport.dataplane.table import ModelVersion
from modelport.errors import ConfigError, InvalidRequest, NotFound, ResidencyRefused
from modelport.observability.metrics import Metrics
from modelport.regions import region_allowed
from modelport.types import Identity, InferenceRequest, ModelSignature, Role, Tensor, TensorSpec
from tests.unit.dataplane.versions import scheduled_version


@pytest.mark.parametrize(
    ("region", "residency", "allowed"),
    [
        ("ae-dxb-1", [], True),  # unconstrained
        (None, [], True),
        ("ae-dxb-1", ["ae"], True),  # jurisdiction: any ae-* region
        ("ae-auh-2", ["ae"], True),
        ("ae-dxb-1", ["ae-dxb-1"], True),  # full region: that one only
        ("ae-auh-1", ["ae-dxb-1"], False),
        ("ae-dxb-1", ["ae-dxb"], False),  # no partial prefixes
        ("eu-west-1", ["ae"], False),
        ("aes-x-1", ["ae"], False),  # a jurisdiction is a whole label
        ("eu-west-1", ["ae", "eu"], True),  # a list is "any of"
        ("eu-west-1", ["ae", "eu-west-1"], True),
        ("sa-ruh-1", ["ae", "eu-west-1"], False),
        (None, ["ae"], False),  # no region: fail closed
        ("ae", ["ae"], True),
    ],
)
def test_region_allowed(region: str | None, residency: list[str], allowed: bool) -> None:
    assert region_allowed(region, residency) is allowed
    assert (data_refusal(region, residency, "test") is None) is allowed
    assert (model_refusal(region, residency) is None) is allowed


def test_refusals_name_the_residency_and_the_region() -> None:
    assert data_refusal("eu-west-1", ["ae"], "X-Data-Residency header") == (
        "data residency [ae] (X-Data-Residency header) does not allow processing in this "
        "node's region 'eu-west-1'; send the request to a node in an allowed region"
    )
    reason = model_refusal(None, ["ae"])
    assert reason is not None and "no region" in reason and "--region" in reason
    reason = model_refusal("eu-west-1", ["ae", "sa"])
    assert (
        reason == "the model's residency is [ae, sa]; this node's region 'eu-west-1' is not in it"
    )


def test_parse_residency_lists_and_normalises() -> None:
    assert parse_residency("ae") == ("ae",)
    assert parse_residency(" AE , eu-west-1") == ("ae", "eu-west-1")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "entry '' is not a jurisdiction"),
        ("ae,,eu", "entry '' is not"),
        ("a", "entry 'a' is not"),
        ("ae dxb", "entry 'ae dxb' is not"),
        ("ae\n", None),  # trailing whitespace is stripped
        (",".join(["ae"] * 17), "more than 16 entries"),
        ("a" * 600, "longer than 512"),
    ],
)
def test_parse_residency_refuses_malformed(text: str, problem: str | None) -> None:
    if problem is None:
        assert parse_residency(text) == ("ae",)
        return
    with pytest.raises(ValueError, match=problem):
        parse_residency(text)


ACME = Identity("key:1", "alice", Role.INVOKER, ("*",), tenant="acme")
OTHER = Identity("key:2", "bob", Role.INVOKER, ("*",), tenant="other")


def _guard(region: str | None, audit: AuthAudit | None = None) -> ResidencyGuard:
    return ResidencyGuard(region, {"acme": ["ae"]}, audit)


def _req(identity: Identity | None = None) -> InferenceRequest:
    return InferenceRequest("m", None, [], identity=identity)


def _headers(**values: str) -> Any:
    lower = {k.lower().replace("_", "-"): v for k, v in values.items()}
    return lambda name: lower.get(name.lower())


@pytest.mark.parametrize(
    ("region", "identity", "header", "refused"),
    [
        ("eu-west-1", None, None, False),  # nothing declared: unconstrained
        ("eu-west-1", None, "ae", True),
        ("ae-dxb-1", None, "ae", False),
        ("eu-west-1", ACME, None, True),  # implied by the tenant
        ("ae-dxb-1", ACME, None, False),
        ("eu-west-1", OTHER, None, False),  # a tenant without a mapping
        ("eu-west-1", ACME, "eu", False),  # the header wins over the tenant
        (None, None, "ae", True),  # no region: declared data is refused
        (None, None, None, False),
    ],
)
def test_guard_sources(
    region: str | None, identity: Identity | None, header: str | None, refused: bool
) -> None:
    lookup = _headers() if header is None else _headers(x_data_residency=header)
    reason = _guard(region).refusal(_req(identity), lookup)
    assert (reason is not None) is refused


def test_guard_names_the_tenant_as_the_source() -> None:
    reason = _guard("eu-west-1").refusal(_req(ACME), None)
    assert reason is not None and "tenant 'acme'" in reason


def test_malformed_header_is_a_bad_request_naming_it() -> None:
    with pytest.raises(InvalidRequest, match="X-Data-Residency header: entry 'a' is not"):
        _guard("ae-dxb-1").refusal(_req(), _headers(x_data_residency="a"))


def test_refuse_counts_audits_and_raises() -> None:
    audit = AuthAudit(None)
    counted: list[str] = []
    guard = ResidencyGuard("eu-west-1", {}, audit, counted.append)
    with pytest.raises(ResidencyRefused, match="model 'm': data residency"):
        guard.refuse("m", _req(ACME), "data residency [ae] ...", "grpc")
    assert counted == ["m"]
    (event,) = audit.pending()
    assert (event.model, event.action, event.actor) == ("m", RESIDENCY_REFUSED, "alice")
    assert event.detail["region"] == "eu-west-1"
    assert event.detail["protocol"] == "grpc"
    assert event.detail["identity"] == "key:1"


def test_tenant_residency_setting() -> None:
    config = load_server_config(None, {}, {"tenant_residency": {"acme": "ae, SA-ruh-1"}})
    assert config.tenant_residency == {"acme": ["ae", "sa-ruh-1"]}
    with pytest.raises(ConfigError, match=r"--tenant-residency.*tenant 'acme'"):
        load_server_config(None, {}, {"tenant_residency": {"acme": ["a e"]}})


# ---------------------------------------------------------------- the pipeline hook

SIGNATURE = ModelSignature(
    inputs=(TensorSpec("x", "FP32", (-1, 2)),),
    outputs=(TensorSpec("y", "FP32", (-1, 2)),),
    max_batch_size=4,
)


class Echo:
    native = SIGNATURE
    inline_safe = False
    pin_safe = False

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, inputs: Any, outputs: Any) -> dict[str, Any]:
        self.calls += 1
        return {"y": inputs["x"]}

    def unload(self) -> None:
        pass


class Table:
    def __init__(self, model: ModelVersion) -> None:
        self.model = model

    def acquire(self, name: str, version: str | None) -> ModelVersion:
        if name != "m":
            raise NotFound(f"unknown model {name!r}")
        return self.model

    def versions(self, name: str) -> list[str]:
        return ["1"]

    def ready(self) -> list[ModelVersion]:
        return [self.model]

    def is_ready(self) -> bool:
        return True


def _pipeline(region: str | None) -> tuple[Pipeline, Echo, Metrics, AuthAudit]:
    runtime = Echo()
    config = parse_model_config({"max_batch_size": 4}, "t")
    model = scheduled_version(runtime, SIGNATURE, config)
    metrics, audit = Metrics(), AuthAudit(None)
    guard = ResidencyGuard(
        region, {}, audit, lambda name: metrics.residency_refused.labels(name).inc()
    )
    return Pipeline(Table(model), metrics, residency=guard), runtime, metrics, audit


def _infer(name: str = "m") -> InferenceRequest:
    x = np.ones((1, 2), np.float32)
    return InferenceRequest(name, None, [Tensor("x", "FP32", x.shape, x)])


def test_pipeline_refuses_before_compute() -> None:
    pipeline, runtime, metrics, audit = _pipeline("eu-west-1")
    with pytest.raises(ResidencyRefused, match="eu-west-1"):
        asyncio.run(pipeline.infer(_infer(), "http", _headers(x_data_residency="ae")))
    assert runtime.calls == 0
    assert [e.action for e in audit.pending()] == [RESIDENCY_REFUSED]
    assert 'modelport_residency_refused_total{model="m"} 1.0' in metrics.render().decode()


def test_pipeline_serves_allowed_data() -> None:
    pipeline, runtime, _metrics, audit = _pipeline("ae-dxb-1")
    asyncio.run(pipeline.infer(_infer(), "grpc", _headers(x_data_residency="ae")))
    assert runtime.calls == 1
    assert audit.pending() == []


def test_unknown_model_is_not_found_before_residency() -> None:
    pipeline, *_ = _pipeline("eu-west-1")
    with pytest.raises(NotFound):
        asyncio.run(pipeline.infer(_infer("nope"), "http", _headers(x_data_residency="ae")))


# ------------------------------------------------------- admission's first phase


def test_before_the_body_residency_is_refused_and_audited() -> None:
    pipeline, runtime, metrics, audit = _pipeline("eu-west-1")
    with pytest.raises(ResidencyRefused, match="eu-west-1"):
        pipeline.admission.before_body("m", None, None, _headers(x_data_residency="ae"), "grpc")
    assert runtime.calls == 0
    (event,) = audit.pending()
    assert (event.action, event.detail["protocol"]) == (RESIDENCY_REFUSED, "grpc")
    assert 'modelport_residency_refused_total{model="m"} 1.0' in metrics.render().decode()


def test_before_the_body_a_tenant_carries_its_residency() -> None:
    pipeline, *_ = _pipeline("eu-west-1")
    pipeline.admission.residency = ResidencyGuard("eu-west-1", {"acme": ["ae"]}, None)
    with pytest.raises(ResidencyRefused, match="tenant 'acme'"):
        pipeline.admission.before_body("m", None, ACME, _headers(), "http")
    assert pipeline.admission.before_body("m", None, OTHER, _headers(), "http").name == "m"


def test_before_the_body_an_unknown_model_is_not_found_before_residency() -> None:
    pipeline, _runtime, _metrics, audit = _pipeline("eu-west-1")
    with pytest.raises(NotFound):
        pipeline.admission.before_body("nope", None, None, _headers(x_data_residency="ae"))
    assert audit.pending() == []


def test_a_version_admitted_before_the_body_is_not_checked_again() -> None:
    """The transport ran phase one: the pipeline serves without a second residency check."""
    pipeline, runtime, *_ = _pipeline("ae-dxb-1")
    header = _headers(x_data_residency="ae")
    admitted = pipeline.admission.before_body("m", None, None, header, "http")
    # The guard now refuses everything; only a second check would see it.
    pipeline.admission.residency = ResidencyGuard(None, {}, None)
    pipeline.residency = pipeline.admission.residency
    asyncio.run(pipeline.infer(_infer(), "http", header, None, admitted))
    assert runtime.calls == 1
    # Without ``admitted`` the pipeline checks residency itself: no entry skips it.
    with pytest.raises(ResidencyRefused):
        asyncio.run(pipeline.infer(_infer(), "http", header))
    assert runtime.calls == 1
