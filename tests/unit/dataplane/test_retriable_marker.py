"""``modelport-retriable``: on refusals made before any of a request's work, on no other answer."""

from __future__ import annotations

import asyncio

import pytest

from modelport.controlplane.coldstart import ColdLoads
from modelport.dataplane.admission.stages import Admission
from modelport.dataplane.transport.grpc.errors import trailing_metadata
from modelport.dataplane.transport.http.errors import error_headers
from modelport.errors import (
    ModelNotReady,
    ModelportError,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from modelport.observability.metrics import Metrics
from tests.fake_clock import FakeClock
from tests.unit.dataplane.test_admission_stages import Servable, Table, Version

MARK = (b"modelport-retriable", b"true")


def _marked(exc: ModelportError) -> bool:
    http = MARK in error_headers(exc)
    grpc = ("modelport-retriable", "true") in trailing_metadata(exc)
    assert http == grpc, "both transports must agree"
    return http


def _refusal(admission: Admission) -> ModelportError:
    with pytest.raises(ModelportError) as raised:
        admission.before_body("m", "1")
    return raised.value


def test_a_full_queue_seen_before_the_body_is_retriable() -> None:
    version = Version(servable=Servable(Unavailable("queue full")))
    refused = _refusal(Admission(Table(version), Metrics()))  # type: ignore[arg-type]
    assert isinstance(refused, Unavailable)
    assert _marked(refused)


def test_a_node_leaving_its_fleet_refuses_new_requests_as_retriable() -> None:
    admission = Admission(Table(Version()), Metrics())  # type: ignore[arg-type]
    assert admission.before_body("m", "1") is not None
    admission.leaving = True
    refused = _refusal(admission)
    assert isinstance(refused, Unavailable)
    assert "leaving" in refused.message
    assert _marked(refused)


def test_a_full_cold_start_hold_queue_is_retriable() -> None:
    async def scenario() -> ModelportError:
        loads: ColdLoads[str] = ColdLoads(FakeClock(), timeout_s=60, hold_limit=1)
        release = asyncio.Event()

        async def load() -> str | None:
            await release.wait()
            return None

        held = asyncio.create_task(loads.wait("m", "m", load, None))
        for _ in range(5):
            await asyncio.sleep(0)
        try:
            await loads.wait("m", "m", load, None)
        except ModelportError as exc:
            return exc
        finally:
            release.set()
            await held
        raise AssertionError("the second caller was held")

    assert _marked(asyncio.run(scenario()))


@pytest.mark.parametrize(
    "error",
    [
        Unavailable("queue full at submission, after the body was decoded"),
        Unavailable("still loading", 3.0),
        ModelNotReady("failed to load"),
        RateLimited("over the limit", 1.0),
        Unauthenticated("who are you"),
    ],
)
def test_no_other_answer_is_retriable(error: ModelportError) -> None:
    assert not _marked(error)
