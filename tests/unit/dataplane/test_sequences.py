"""Sequence batching: the pure decisions, the parameters, then the scheduler with a fake runtime.

The fake runtime computes from what the server fed it (``OUT = IN + 1000 *
START + 10000 * END``, ``STATE_OUT = STATE_IN + IN``) and records every feed,
so tests assert the control values, the rows and the order each batch had.
Idle timeouts run on a fake clock.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from modelport.config.model import parse_model_config
from modelport.dataplane.codec.parameters import apply_request_parameters, sequence_of
from modelport.dataplane.scheduling.queue import Pending
from modelport.dataplane.scheduling.sequencer import SequenceScheduler
from modelport.dataplane.scheduling.sequences import (
    DEFAULT_IDLE_NS,
    Lane,
    Step,
    choose_direct,
    feed_for,
    idle_feed,
    sequence_settings,
)
from modelport.errors import ConfigError, InvalidRequest
from modelport.types import InferenceRequest, ModelSignature, TensorSpec
from tests.fake_clock import FakeClock

CONTROLS = [
    {"name": "START", "control": [{"kind": "CONTROL_SEQUENCE_START", "int32_false_true": [0, 1]}]},
    {"name": "END", "control": [{"kind": "CONTROL_SEQUENCE_END", "int32_false_true": [0, 1]}]},
    {"name": "READY", "control": [{"kind": "CONTROL_SEQUENCE_READY", "bool_false_true": [0, 1]}]},
    {
        "name": "CORRID",
        "control": [{"kind": "CONTROL_SEQUENCE_CORRID", "data_type": "TYPE_UINT64"}],
    },
]
STATE = [
    {"input_name": "STATE_IN", "output_name": "STATE_OUT", "data_type": "TYPE_FP32", "dims": [1]}
]


def settings(
    strategy: str = "direct", max_batch_size: int = 2, instances: int = 1, **sb: Any
) -> Any:
    config = parse_model_config(
        {
            "max_batch_size": max_batch_size,
            "sequence_batching": {"control_input": CONTROLS, "state": STATE, strategy: {}, **sb},
        },
        "t",
    )
    return sequence_settings(config, instances, "t")


class Recorder:
    """Computes from the controls and state it is fed; records each feed."""

    native = ModelSignature(
        (TensorSpec("IN", "FP32", (-1, 1)),), (TensorSpec("OUT", "FP32", (-1, 1)),)
    )
    inline_safe = False
    pin_safe = False

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.feeds: list[dict[str, Any]] = []
        self.gate = gate
        self.entered = threading.Event()

    def predict(self, inputs: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        self.feeds.append({k: np.array(v) for k, v in inputs.items()})
        x = inputs["IN"]
        out = x + 1000 * inputs["START"] + 10000 * inputs["END"]
        return {"OUT": out.astype(np.float32), "STATE_OUT": inputs["STATE_IN"] + x}

    def unload(self) -> None:
        pass


def one(value: float) -> dict[str, Any]:
    return {"IN": np.array([[value]], dtype=np.float32)}


def scheduler(runtime: Recorder, clock: FakeClock | None = None, **kw: Any) -> SequenceScheduler:
    return SequenceScheduler(runtime, settings(**kw), "t", clock=clock)


async def send(
    s: SequenceScheduler, sid: int, value: float, start: bool = False, end: bool = False
) -> tuple[float, float]:
    ex = await s.submit(sid, start, end, one(value), ["OUT", "STATE_OUT"], 1)
    return float(ex.outputs["OUT"][0, 0]), float(ex.outputs["STATE_OUT"][0, 0])


# ------------------------------------------------------------ settings


def test_defaults_follow_triton() -> None:
    s = settings(max_batch_size=4, instances=2)
    assert s.idle_ns == DEFAULT_IDLE_NS
    assert not s.oldest
    assert s.candidates == 8  # two instances of four slots
    assert s.hidden_inputs == {"START", "END", "READY", "CORRID", "STATE_IN"}
    assert s.hidden_outputs == {"STATE_OUT"}
    oldest = settings("oldest", max_batch_size=4, max_sequence_idle_microseconds=5)
    assert oldest.oldest and oldest.idle_ns == 5000


@pytest.mark.parametrize(
    ("control", "words"),
    [
        ({"kind": "CONTROL_SEQUENCE_START"}, "exactly one"),
        ({"kind": "CONTROL_SEQUENCE_START", "int32_false_true": [0]}, "two values"),
        ({"kind": "CONTROL_SEQUENCE_CORRID"}, "needs data_type"),
        ({"kind": "CONTROL_SEQUENCE_CORRID", "data_type": "TYPE_FP32"}, "needs data_type"),
        (
            {"kind": "CONTROL_SEQUENCE_END", "fp32_false_true": [0, 1], "bool_false_true": [0, 1]},
            "exactly one",
        ),
    ],
)
def test_bad_controls_are_config_errors(control: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_model_config(
            {"sequence_batching": {"control_input": [{"name": "C", "control": [control]}]}}, "t"
        )
    assert words in str(info.value)


def test_both_strategies_are_refused() -> None:
    with pytest.raises(ConfigError, match="one strategy"):
        parse_model_config({"sequence_batching": {"direct": {}, "oldest": {}}}, "t")


def test_iterative_sequences_are_refused() -> None:
    config = parse_model_config({"sequence_batching": {"iterative_sequence": True}}, "t")
    with pytest.raises(ConfigError, match="iterative_sequence"):
        sequence_settings(config, 1, "t")


# ------------------------------------------------------------ parameters


def _request(**params: Any) -> InferenceRequest:
    request = InferenceRequest("m", None, [], parameters=dict(params))
    apply_request_parameters(request)
    return request


def test_sequence_parameters_normalized() -> None:
    assert sequence_of(_request(sequence_id=7, sequence_start=True).parameters) == (7, True, False)
    assert sequence_of(_request(sequence_id="s", sequence_end=True).parameters) == (
        "s",
        False,
        True,
    )
    assert sequence_of(_request(sequence_id=(1 << 64) - 1).parameters) == (
        (1 << 64) - 1,
        False,
        False,
    )
    # Id 0 with no flag names no sequence: the keys are gone.
    zero = _request(sequence_id=0, sequence_start=False, sequence_end=False)
    assert zero.parameters == {}
    assert sequence_of(zero.parameters) is None


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"sequence_id": -1}, "unsigned 64-bit"),
        ({"sequence_id": 1 << 64}, "unsigned 64-bit"),
        ({"sequence_id": 1.5}, "unsigned 64-bit"),
        ({"sequence_id": True}, "unsigned 64-bit"),
        ({"sequence_id": 1, "sequence_start": 1}, "must be a boolean"),
        ({"sequence_start": True}, "needs a non-zero"),
        ({"sequence_id": "", "sequence_end": True}, "needs a non-zero"),
    ],
)
def test_bad_sequence_parameters(params: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        _request(**params)


# ------------------------------------------------------------ pure decisions


def _lane(sid: int, slot: int, value: float | None, start: bool = False, end: bool = False) -> Lane:
    lane = Lane(sid, 0, slot=slot)
    if value is not None:
        inputs = one(value)
        key = (("IN", (1,), "<f4"),)
        lane.steps.append(Step(Pending(inputs, 1, key, 0, 0, None, None), start, end))  # type: ignore[arg-type]
    return lane


def test_direct_batch_pads_rows_without_a_request() -> None:
    s = settings(max_batch_size=4)
    slots: list[Lane | None] = [_lane(1, 0, None), None, _lane(3, 2, 5.0, start=True), None]
    batch = choose_direct(slots, 0, s, 0)
    assert [lane.sid if lane else None for lane in batch.rows] == [None, None, 3]
    feed = feed_for(batch.rows, s)
    assert feed["IN"].tolist() == [[0.0], [0.0], [5.0]]
    assert feed["READY"].tolist() == [[False], [False], [True]]
    assert feed["START"].tolist() == [[0], [0], [1]]
    assert feed["END"].tolist() == [[0], [0], [0]]
    assert feed["CORRID"].tolist() == [[0], [0], [3]]
    assert feed["CORRID"].dtype == np.uint64
    assert feed["STATE_IN"].shape == (3, 1)


def test_direct_batch_of_another_instance_is_its_own() -> None:
    s = settings(max_batch_size=2, instances=2)
    slots: list[Lane | None] = [_lane(1, 0, 1.0), None, None, _lane(4, 3, 2.0)]
    assert [lane.sid if lane else None for lane in choose_direct(slots, 0, s, 0).rows] == [1]
    assert [lane.sid if lane else None for lane in choose_direct(slots, 1, s, 0).rows] == [None, 4]


def test_direct_waits_for_slot_utilization_up_to_the_delay() -> None:
    s = settings(
        max_batch_size=4,
        direct={"max_queue_delay_microseconds": 100, "minimum_slot_utilization": 1.0},
    )
    slots: list[Lane | None] = [_lane(1, 0, 1.0), _lane(2, 1, None), None, None]
    waiting = choose_direct(slots, 0, s, 10_000)
    assert waiting.rows == () and waiting.wake_at_ns == 100_000
    assert [lane.sid if lane else None for lane in choose_direct(slots, 0, s, 100_000).rows] == [1]


def test_idle_feed_for_warm_up() -> None:
    feed = idle_feed(settings(max_batch_size=4), 3)
    assert feed["READY"].tolist() == [[False]] * 3
    assert feed["STATE_IN"].shape == (3, 1)


# ------------------------------------------------------------ the scheduler


def test_controls_and_state_follow_each_sequence() -> None:
    runtime = Recorder()

    async def run() -> None:
        s = scheduler(runtime)
        assert await send(s, 1, 1.0, start=True) == (1001.0, 1.0)
        assert await send(s, 2, 10.0, start=True) == (1010.0, 10.0)
        assert await send(s, 1, 2.0) == (2.0, 3.0)
        assert await send(s, 2, 20.0, end=True) == (10020.0, 30.0)
        assert await send(s, 1, 3.0, end=True) == (10003.0, 6.0)
        assert s.active == 0
        s.close()

    asyncio.run(run())
    # Sequence 2 held row 1 of the instance: its batches have a padding row 0.
    second = runtime.feeds[1]
    assert second["READY"].tolist() == [[False], [True]]
    assert second["CORRID"].tolist() == [[0], [2]]


def test_unknown_and_ended_sequences_are_refused() -> None:
    async def run() -> None:
        s = scheduler(Recorder())
        with pytest.raises(InvalidRequest, match="sequence 5 is not active"):
            await send(s, 5, 1.0)
        await send(s, 5, 1.0, start=True, end=True)
        with pytest.raises(InvalidRequest, match="sequence 5 is not active"):
            await send(s, 5, 1.0)
        with pytest.raises(InvalidRequest, match="batch size 1"):
            await s.submit(6, True, False, {"IN": np.zeros((2, 1), np.float32)}, ["OUT"], 2)
        s.close()

    asyncio.run(run())


def test_requests_of_a_sequence_run_in_order_one_at_a_time() -> None:
    gate = threading.Event()
    runtime = Recorder(gate)

    async def run() -> None:
        s = scheduler(runtime, strategy="oldest", max_batch_size=4)
        first = asyncio.ensure_future(send(s, 1, 1.0, start=True))
        await asyncio.sleep(0)
        await asyncio.to_thread(runtime.entered.wait, 10)
        rest = [asyncio.ensure_future(send(s, 1, v)) for v in (2.0, 3.0)]
        other = asyncio.ensure_future(send(s, 2, 100.0, start=True))
        await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(first, *rest, other)
        assert [r[1] for r in results] == [1.0, 3.0, 6.0, 100.0]
        s.close()

    asyncio.run(run())
    # One request per sequence per batch: the oldest sequence's next and sequence 2's start.
    assert [f["IN"].reshape(-1).tolist() for f in runtime.feeds] == [[1.0], [2.0, 100.0], [3.0]]
    assert runtime.feeds[1]["CORRID"].reshape(-1).tolist() == [1, 2]


def test_sequences_past_the_slots_wait_in_the_backlog() -> None:
    async def run() -> None:
        s = scheduler(Recorder(), max_batch_size=1)
        await send(s, 1, 1.0, start=True)
        waiting = asyncio.ensure_future(send(s, 2, 5.0, start=True))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        assert s.backlog == 1 and s.slot_of(2) is None
        await send(s, 1, 2.0, end=True)
        assert await waiting == (1005.0, 5.0)
        assert s.slot_of(2) == 0
        s.close()

    asyncio.run(run())


def test_an_idle_sequence_ends_and_frees_its_slot() -> None:
    clock = FakeClock()

    async def run() -> None:
        s = scheduler(Recorder(), clock=clock, max_batch_size=1, max_sequence_idle_microseconds=500)
        await send(s, 1, 1.0, start=True)
        waiting = asyncio.ensure_future(send(s, 2, 5.0, start=True))
        await asyncio.sleep(0.01)
        clock.advance(499_000)
        await asyncio.sleep(0.01)
        assert not waiting.done()
        clock.advance(1_000)
        assert await waiting == (1005.0, 5.0)
        with pytest.raises(InvalidRequest, match="sequence 1 is not active"):
            await send(s, 1, 2.0)
        s.close()

    asyncio.run(run())


def test_a_start_for_an_active_sequence_restarts_it_in_turn() -> None:
    async def run() -> None:
        s = scheduler(Recorder())
        await send(s, 1, 1.0, start=True)
        await send(s, 1, 2.0)
        assert await send(s, 1, 7.0, start=True) == (1007.0, 7.0)
        assert await send(s, 1, 1.0, end=True) == (10001.0, 8.0)
        s.close()

    asyncio.run(run())


def test_a_request_whose_caller_left_still_runs() -> None:
    gate = threading.Event()
    runtime = Recorder(gate)

    async def run() -> None:
        s = scheduler(runtime)
        first = asyncio.ensure_future(send(s, 1, 1.0, start=True))
        await asyncio.sleep(0)
        await asyncio.to_thread(runtime.entered.wait, 10)
        second = asyncio.ensure_future(send(s, 1, 2.0))
        await asyncio.sleep(0)
        second.cancel()
        gate.set()
        await first
        # The cancelled request ran: the state holds its value.
        assert await send(s, 1, 4.0, end=True) == (10004.0, 7.0)
        s.close()

    asyncio.run(run())


def test_drain_waits_for_accepted_requests() -> None:
    async def run() -> None:
        s = scheduler(Recorder())
        await send(s, 1, 1.0, start=True)
        await s.drain_and_close()
        with pytest.raises(Exception, match="unloaded"):
            await send(s, 1, 1.0)

    asyncio.run(run())


def test_string_ids_fill_a_string_corrid() -> None:
    controls = [
        {"name": "ID", "control": [{"kind": "CONTROL_SEQUENCE_CORRID", "data_type": "TYPE_STRING"}]}
    ]
    config = parse_model_config(
        {"max_batch_size": 2, "sequence_batching": {"control_input": controls}}, "t"
    )
    s = sequence_settings(config, 1, "t")
    rows = [None, _lane(1, 1, 1.0)]
    rows[1].sid = "session-1"  # type: ignore[union-attr]
    assert feed_for(rows, s)["ID"].tolist() == [[b""], [b"session-1"]]


def test_direct_runs_each_sequence_on_its_own_instance_thread() -> None:
    ran: list[tuple[int, str]] = []

    class Threads(Recorder):
        def predict(self, inputs: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
            sid = int(inputs["CORRID"].reshape(-1)[0])
            ran.append((sid, threading.current_thread().name))
            return super().predict(inputs, outputs)

    async def run() -> None:
        s = scheduler(Threads(), max_batch_size=1, instances=2)
        await asyncio.gather(send(s, 1, 1.0, start=True), send(s, 2, 1.0, start=True))
        for _ in range(5):
            await asyncio.gather(send(s, 1, 1.0), send(s, 2, 1.0))
        s.close()

    asyncio.run(run())
    threads = {sid: {name for got, name in ran if got == sid} for sid in (1, 2)}
    assert len(threads[1]) == 1 and len(threads[2]) == 1
    assert threads[1] != threads[2]
