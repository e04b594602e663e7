"""W3C trace context carried from a call's headers or metadata into its Call."""

from __future__ import annotations

from typing import Any

import pytest

from modelport.dataplane.transport.grpc.metadata import MetadataView
from modelport.dataplane.transport.http.headers import HeaderView
from modelport.dataplane.transport.trace import MAX_TRACESTATE, trace_context

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
