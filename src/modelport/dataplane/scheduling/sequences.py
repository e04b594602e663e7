"""Sequence batching, the decisions: settings, control tensors, state, slots.

A stateful model (Triton's ``sequence_batching``) gets requests that belong
to sequences: each names a ``sequence_id`` (Triton's correlation id), the
first says ``sequence_start`` and the last ``sequence_end``. The model must
see a sequence's requests one at a time and in order, and is told where each
stands through *control inputs* the server fills (the client never sends
them):

- START: true on a sequence's first request;
- END: true on its last;
- READY: true on a batch row that holds a request (false on a padding row);
- CORRID: the sequence id itself.

and, where the config declares ``state``, through *implicit state*: the
server keeps each sequence's ``output_name`` tensor and feeds it back as
``input_name`` on the sequence's next request (zeros, or the configured
initial state, on its first).

Each sequence holds a *slot* for its life: an instance and a row of that
instance's batches. With Triton's ``direct`` strategy a batch is the slots of
one instance, row by row, so a sequence's requests always reach the same
instance at the same batch row, with READY false on rows whose sequence has
no request ready; with ``oldest`` a batch is up to ``max_batch_size``
sequences' next requests, oldest sequence first, one per sequence, on
whichever instance is free. Sequences beyond the slots wait in a backlog, in
arrival order, until a slot frees. A sequence with no request for
``max_sequence_idle_microseconds`` (Triton's default: 1 s) is ended and its
slot freed.

Everything here is a pure function of the config, the lanes and the time;
``sequencer.py`` is the stateful shell that feeds it and runs the batches.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelport.config.model import ModelConfig, SequenceBatching, SequenceControl
from modelport.dataplane.scheduling.policy import (
    DEFAULT_MAX_QUEUE_SIZE,
    LevelPolicy,
    SchedulingPolicy,
)
from modelport.dataplane.scheduling.queue import Pending
from modelport.errors import ConfigError
from modelport.types import CONFIG_TYPES, DTYPES, Array

#: Triton's default ``max_sequence_idle_microseconds``.
DEFAULT_IDLE_NS = 1_000_000_000

START = "CONTROL_SEQUENCE_START"
READY = "CONTROL_SEQUENCE_READY"
END = "CONTROL_SEQUENCE_END"
CORRID = "CONTROL_SEQUENCE_CORRID"


@dataclass(frozen=True, slots=True)
class Control:
    """One control input, resolved: which signal, and the array values it takes."""

    name: str
    kind: str
    dtype: np.dtype[Any]
    false: Any = None
    true: Any = None


def _control(name: str, c: SequenceControl) -> Control:
    if c.kind == CORRID:
        return Control(name, CORRID, DTYPES[CONFIG_TYPES[c.data_type]])
    if c.int32_false_true:
        pair: list[Any] = c.int32_false_true
        dtype = DTYPES["INT32"]
    elif c.fp32_false_true:
        pair, dtype = c.fp32_false_true, DTYPES["FP32"]
    else:
        pair, dtype = c.bool_false_true, DTYPES["BOOL"]
    return Control(name, c.kind, dtype, dtype.type(pair[0]), dtype.type(pair[1]))


@dataclass(frozen=True, slots=True)
class StateSpec:
    """One implicit state: fed as ``input_name``, read back from ``output_name``."""

    input_name: str
    output_name: str
    initial: Array
    """The value of one sequence's state at its start (without the batch dimension)."""


@dataclass(frozen=True, slots=True)
class SequenceSettings:
    """A sequence model's scheduling, resolved once at load."""

    oldest: bool
    """Triton's ``oldest`` strategy; False is ``direct``."""
    instances: int
    slots_per_instance: int
    """Batch rows one instance's batch may hold (direct); 1 for a model that does not batch."""
    candidates: int
    """Sequences that hold a slot at once; the rest wait in the backlog."""
    batching: bool
    """The model takes a batch dimension (``max_batch_size > 0``)."""
    idle_ns: int
    delay_ns: int
    """How long a direct batch waits for more slots to be ready (``max_queue_delay``)."""
    min_utilization: float
    """Direct: the fraction of occupied slots ready that lets a batch go before the delay."""
    controls: tuple[Control, ...]
    states: tuple[StateSpec, ...]
    max_queued: int
    """Requests of all sequences that may wait at once; one more is refused (503)."""
    policy: SchedulingPolicy
    """The oldest strategy's dynamic batching of the sequences' next requests."""

    @property
    def hidden_inputs(self) -> frozenset[str]:
        """Model inputs the server fills: control inputs and state inputs."""
        return frozenset([c.name for c in self.controls] + [s.input_name for s in self.states])

    @property
    def hidden_outputs(self) -> frozenset[str]:
        """Model outputs the server keeps as state (clients may not ask for them)."""
        return frozenset(s.output_name for s in self.states)


def _initial(spec: Any, source: str, where: str, model_dir: Path) -> Array:
    dtype = DTYPES[CONFIG_TYPES[spec.data_type]]
    init = spec.initial_state[0] if spec.initial_state else None
    dims = list(init.dims) if init is not None and init.dims else list(spec.dims)
    if any(d < 0 for d in dims):
        raise ConfigError(
            source,
            f"{where}.dims",
            "a state with a dimension of -1 needs initial_state with its dims",
        )
    shape = tuple(dims)
    if init is None or not init.data_file:
        return np.zeros(shape, dtype=dtype)
    path = (model_dir / "initial_state" / init.data_file).resolve()
    if not path.is_relative_to((model_dir / "initial_state").resolve()):
        raise ConfigError(source, f"{where}.initial_state[0].data_file", "outside the model")
    need = int(np.prod(shape)) * dtype.itemsize
    try:
        data = path.read_bytes()[:need]
    except OSError as exc:
        raise ConfigError(
            source, f"{where}.initial_state[0].data_file", f"cannot read: {exc.strerror}"
        ) from None
    if len(data) < need:
        raise ConfigError(
            source,
            f"{where}.initial_state[0].data_file",
            f"holds {len(data)} bytes; the state needs {need}",
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def sequence_settings(
    config: ModelConfig, instances: int, source: str, model_dir: Path | None = None
) -> SequenceSettings:
    """Resolve a sequence model's settings; ConfigError names what cannot be served."""
    sb: SequenceBatching | None = config.sequence_batching
    if sb is None:
        raise ValueError("not a sequence model")
    if sb.iterative_sequence:
        raise ConfigError(
            source, "sequence_batching.iterative_sequence", "is not served by modelport"
        )
    controls = tuple(_control(ci.name, ci.control[0]) for ci in sb.control_input)
    names = [c.name for c in controls]
    if len(set(names)) != len(names):
        raise ConfigError(source, "sequence_batching.control_input", "names an input twice")
    batching = config.max_batch_size > 0
    states = tuple(
        StateSpec(
            s.input_name,
            s.output_name,
            _initial(s, source, f"sequence_batching.state[{i}]", model_dir or Path(".")),
        )
        for i, s in enumerate(sb.state)
    )
    per_instance = config.max_batch_size if batching else 1
    oldest = sb.oldest is not None
    if oldest and sb.oldest is not None:
        candidates = sb.oldest.max_candidate_sequences or per_instance * instances
        delay_ns = sb.oldest.max_queue_delay_microseconds * 1000
        preferred = frozenset(sb.oldest.preferred_batch_size)
        min_utilization = 0.0
    else:
        candidates = per_instance * instances
        direct = sb.direct
        delay_ns = direct.max_queue_delay_microseconds * 1000 if direct is not None else 0
        min_utilization = direct.minimum_slot_utilization if direct is not None else 0.0
        preferred = frozenset()
    max_queued = max(DEFAULT_MAX_QUEUE_SIZE, 4 * candidates)
    policy = SchedulingPolicy(
        max_batch_size=config.max_batch_size if batching else 0,
        max_queue_delay_ns=delay_ns,
        preferred_batch_sizes=preferred,
        levels=(LevelPolicy(max_queued, None, False, False),),
        default_level=0,
        batch_key=None,
        server_timeout_ns=None,
    )
    return SequenceSettings(
        oldest=oldest,
        instances=instances,
        slots_per_instance=per_instance,
        candidates=candidates,
        batching=batching,
        idle_ns=sb.max_sequence_idle_microseconds * 1000 or DEFAULT_IDLE_NS,
        delay_ns=delay_ns,
        min_utilization=min_utilization,
        controls=controls,
        states=states,
        max_queued=max_queued,
        policy=policy,
    )


# ------------------------------------------------------------------ lanes


@dataclass(eq=False, slots=True)
class Step:
    """One request of a sequence, waiting for or riding in an execution."""

    pending: Pending
    """Its arrays, rows, batch key, arrival time and the caller's future."""
    start: bool
    end: bool


@dataclass(eq=False, slots=True)
class Lane:
    """One sequence id's requests, slot and state.

    ``open`` is whether the sequence takes more requests: set by a START,
    cleared by an END (or by idling out). A lane stays in the table while it
    is open or still has requests to run; its slot is freed when it leaves.
    """

    sid: int | str
    since_ns: int
    """When the sequence started: the oldest strategy serves older sequences first."""
    steps: deque[Step] = field(default_factory=deque)
    slot: int | None = None
    """Index into the slot table: ``instance * slots_per_instance + row``; None in the backlog."""
    running: bool = False
    open: bool = True
    state: dict[str, Array] | None = None
    idle_timer: Any = None

    @property
    def ready(self) -> bool:
        """Has a request to run now: holds a slot, and nothing of it is running."""
        return self.slot is not None and not self.running and bool(self.steps)


@dataclass(frozen=True, slots=True)
class DirectBatch:
    """What one instance runs next under the direct strategy."""

    rows: tuple[Lane | None, ...]
    """Batch row by row: the lane whose next request fills it, or None (padding, READY false)."""
    wake_at_ns: int | None = None
    """When to decide again, when the batch waits (``rows`` empty)."""


def choose_direct(
    slots: Sequence[Lane | None], instance: int, settings: SequenceSettings, now_ns: int
) -> DirectBatch:
    """The direct strategy's next batch for a free ``instance``.

    Rows are the instance's slots up to the last one ready; a ready lane's
    next request fills its row when its arrays' key matches the first ready
    row's (inner shapes), other rows are padding. With
    ``max_queue_delay_microseconds`` the batch waits, up to that delay after
    its oldest request arrived, until ``minimum_slot_utilization`` of the
    instance's occupied slots are ready (0, the default: it never waits).
    """
    per = settings.slots_per_instance
    mine = slots[instance * per : (instance + 1) * per]
    ready = [lane for lane in mine if lane is not None and lane.ready]
    if not ready:
        return DirectBatch(())
    if settings.delay_ns:
        occupied = sum(lane is not None for lane in mine)
        if len(ready) < settings.min_utilization * occupied:
            due = min(lane.steps[0].pending.enqueued_ns for lane in ready) + settings.delay_ns
            if now_ns < due:
                return DirectBatch((), wake_at_ns=due)
    key = ready[0].steps[0].pending.key
    rows: list[Lane | None] = [
        lane if lane is not None and lane.ready and lane.steps[0].pending.key == key else None
        for lane in mine
    ]
    while rows and rows[-1] is None:
        rows.pop()
    return DirectBatch(tuple(rows))


# ------------------------------------------------------------------ tensors


def feed_for(rows: Sequence[Lane | None], settings: SequenceSettings) -> dict[str, Array]:
    """The arrays one execution takes: the rows' inputs, controls and states.

    A padding row (None) gets zeros shaped like a real row, READY false, and
    the other controls false (CORRID 0 or ""). The rows' requests share their
    input names and inner shapes (their batch key), so the first one's give
    every row's.
    """
    first = next(lane for lane in rows if lane is not None).steps[0].pending.inputs
    batching = settings.batching
    if not batching:
        feed: dict[str, Array] = dict(first)
    else:
        feed = {}
        for name, array in first.items():
            parts = [
                np.zeros_like(array) if lane is None else lane.steps[0].pending.inputs[name]
                for lane in rows
            ]
            feed[name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    n = len(rows)
    shape = (n, 1) if batching else (1,)
    for c in settings.controls:
        if c.kind == CORRID:
            values: list[Any] = [_corrid(lane.sid if lane else None, c.dtype) for lane in rows]
            feed[c.name] = np.array(values, dtype=c.dtype).reshape(shape)
            continue
        flags = [_flag(c.kind, lane) for lane in rows]
        feed[c.name] = np.array([c.true if f else c.false for f in flags], dtype=c.dtype).reshape(
            shape
        )
    for s in settings.states:
        parts = [_state_in(lane, s) for lane in rows]
        if batching:
            feed[s.input_name] = np.stack(parts, axis=0)
        else:
            feed[s.input_name] = parts[0]
    return feed


def _flag(kind: str, lane: Lane | None) -> bool:
    if lane is None:
        return False
    if kind == READY:
        return True
    step = lane.steps[0]
    return step.start if kind == START else step.end


def _corrid(sid: int | str | None, dtype: np.dtype[Any]) -> Any:
    """A CORRID value: the id as the tensor holds it; 0 or "" for a padding row (None)."""
    if dtype.kind == "O":
        return b"" if sid is None else str(sid).encode()
    # A string id for an integer CORRID is refused at the sequence's start.
    return sid if isinstance(sid, int) else 0


def _state_in(lane: Lane | None, spec: StateSpec) -> Array:
    if lane is None or lane.steps[0].start or lane.state is None:
        return spec.initial
    value = lane.state.get(spec.input_name)
    return spec.initial if value is None else value


def keep_states(
    rows: Sequence[Lane | None],
    settings: SequenceSettings,
    outputs: Mapping[str, Array],
) -> None:
    """Store each real row's state outputs on its lane, for its next request."""
    for i, lane in enumerate(rows):
        if lane is None:
            continue
        kept: dict[str, Array] = {}
        for s in settings.states:
            value = outputs[s.output_name]
            kept[s.input_name] = np.array(value[i] if settings.batching else value, copy=True)
        lane.state = kept


def corrid_fits(sid: int | str, settings: SequenceSettings) -> str | None:
    """Why ``sid`` cannot be a CORRID value of this model, or None when it can."""
    for c in settings.controls:
        if c.kind != CORRID or c.dtype.kind == "O":
            continue
        if isinstance(sid, str):
            return f"the model's {c.name!r} control takes integer sequence ids"
        info = np.iinfo(c.dtype)
        if not info.min <= sid <= info.max:
            return f"sequence id {sid} does not fit the model's {c.name!r} ({c.dtype.name})"
    return None


def idle_feed(settings: SequenceSettings, rows: int) -> dict[str, Array]:
    """Controls and states for ``rows`` rows that belong to no sequence (all false, initial)."""
    shape = (rows, 1) if settings.batching else (1,)
    feed: dict[str, Array] = {}
    for c in settings.controls:
        value = _corrid(None, c.dtype) if c.kind == CORRID else c.false
        feed[c.name] = np.full(shape, value, dtype=c.dtype)
    for s in settings.states:
        feed[s.input_name] = (
            np.stack([s.initial] * rows, axis=0) if settings.batching else s.initial
        )
    return feed


def with_idle_controls(
    predict: Callable[[Mapping[str, Array], Sequence[str]], dict[str, Array]],
    settings: SequenceSettings,
) -> Callable[[Mapping[str, Array], Sequence[str]], dict[str, Array]]:
    """``predict`` for load-time warm-up: client inputs in, the server's tensors added."""

    def warm(inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        first = next(iter(inputs.values()), None)
        rows = first.shape[0] if settings.batching and first is not None and first.ndim else 1
        return predict({**inputs, **idle_feed(settings, rows)}, outputs)

    return warm
