"""W3C trace context carried from a call's headers or metadata into its Call."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest

from modelport.clock import SystemClock
from modelport.dataplane.transport.grpc.metadata import MetadataView
from modelport.dataplane.transport.grpc.service import InferenceService
from modelport.dataplane.transport.http.fastpath import InferRoute
from modelport.dataplane.transport.http.headers import HeaderView
from modelport.dataplane.transport.trace import MAX_TRACESTATE, trace_context
from modelport.protos import grpc_service_pb2 as pb
from modelport.types import Call, InferenceRequest, InferenceResponse

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_well_formed_traceparent_is_kept_with_its_tracestate() -> None:
    view = HeaderView({b"traceparent": PARENT.encode(), b"tracestate": b"congo=t61rcWkgMzE"})
    assert dict(trace_context(view.get)) == {
        "traceparent": PARENT,
        "tracestate": "congo=t61rcWkgMzE",
    }


def test_without_a_traceparent_there_is_no_trace_context() -> None:
    view = HeaderView({b"tracestate": b"congo=t61rcWkgMzE"})
    assert dict(trace_context(view.get)) == {}


@pytest.mark.parametrize(
    "parent",
    [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # 00 has no more
        "not a trace",
    ],
)
def test_a_malformed_traceparent_is_dropped_with_its_tracestate(parent: str) -> None:
    view = HeaderView({b"traceparent": parent.encode(), b"tracestate": b"a=b"})
    assert dict(trace_context(view.get)) == {}


def test_a_later_version_may_carry_more_fields_and_an_oversized_tracestate_is_dropped() -> None:
    later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next"
    view = HeaderView({b"traceparent": later.encode(), b"tracestate": b"x" * (MAX_TRACESTATE + 1)})
    assert dict(trace_context(view.get)) == {"traceparent": later}


class _Context:
    """A gRPC servicer context as far as MetadataView reads it."""

    def __init__(self, metadata: tuple[tuple[str, Any], ...]) -> None:
        self.metadata = metadata
        self.reads = 0

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        self.reads += 1
        return self.metadata


def test_grpc_metadata_is_read_once_and_answers_first_values_without_binary_entries() -> None:
    context = _Context(
        (
            ("traceparent", PARENT),
            ("x-data-residency", "ae"),
            ("x-data-residency", "eu"),
            ("trace-bin", b"\x00\x01"),
        )
    )
    view = MetadataView(context)  # type: ignore[arg-type]
    assert context.reads == 0
    assert dict(trace_context(view.get)) == {"traceparent": PARENT}
    assert view.get("X-Data-Residency") == "ae"
    assert "trace-bin" not in view
    assert sorted(view) == ["traceparent", "x-data-residency"]
    assert len(view) == 2
    assert context.reads == 1


class _Pipeline:
    """Records the Call each transport builds, and answers with no outputs."""

    def __init__(self) -> None:
        self.clock = SystemClock()
        self.calls: list[Call] = []
        self.admission = SimpleNamespace(before_body=lambda *args: None)

    async def infer(
        self, request: InferenceRequest, protocol: str, header: Any, call: Call, admitted: Any
    ) -> InferenceResponse:
        self.calls.append(call)
        return InferenceResponse(request.model_name, "1", [], id=request.id)


def _ctx(pipeline: _Pipeline) -> Any:
    return SimpleNamespace(pipeline=pipeline, max_body_bytes=1 << 20, max_elements=1 << 20)


BODY = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]})


def test_the_rest_infer_route_hands_the_trace_context_to_its_call() -> None:
    pipeline = _Pipeline()
    scope = {
        "type": "http",
        "path": "/v2/models/m/infer",
        "headers": [(b"traceparent", PARENT.encode()), (b"tracestate", b"a=b")],
    }

    async def read(declared: str | None, encoding: str) -> bytes:
        return BODY.encode()

    reply = asyncio.run(InferRoute(_ctx(pipeline)).respond(scope, "m", None, read))
    assert reply is not None and reply[0] == 200
    (call,) = pipeline.calls
    assert dict(call.trace) == {"traceparent": PARENT, "tracestate": "a=b"}


def test_the_grpc_infer_rpc_hands_the_trace_context_to_its_call() -> None:
    pipeline = _Pipeline()
    context = _Context((("traceparent", PARENT),))
    context.time_remaining = lambda: None  # type: ignore[attr-defined]
    context.peer = lambda: "ipv4:127.0.0.1:5000"  # type: ignore[attr-defined]
    message = pb.ModelInferRequest(model_name="m")
    tensor = message.inputs.add(name="x", datatype="FP32", shape=[1])
    tensor.contents.fp32_contents.append(1.0)
    asyncio.run(InferenceService(_ctx(pipeline))._infer(message, context, None))  # type: ignore[arg-type]
    (call,) = pipeline.calls
    assert dict(call.trace) == {"traceparent": PARENT}
