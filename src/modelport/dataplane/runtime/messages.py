"""What crosses the pipe between the server and an instance process.

Both sides import these and nothing else of each other, so the worker never
loads the server's half and a change to a message shows up on both ends.
They are named tuples: one or two cross the pipe per batch, and tuples
pickle fastest. Tensor data does not travel here; ``shm.py`` holds it and
these carry only where it lies.

One batch: ``Batch`` down; ``Room`` up and ``OutputSegment`` down when the
outputs outgrow the output segment; then ``Outputs`` or ``Failure`` up.
``Record`` may come up at any time; ``None`` down asks the worker to stop.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from modelport.dataplane.runtime.shm import Placement
from modelport.types import ModelSignature


class Batch(NamedTuple):
    """Server → worker: inputs are in ``input_segment``; write outputs to ``output_segment``."""

    inputs: tuple[Placement, ...]
    input_segment: str | None
    output_segment: str | None
    output_size: int
    outputs: tuple[str, ...]


class Room(NamedTuple):
    """Worker → server: the outputs need ``nbytes``; answered with an ``OutputSegment``."""

    nbytes: int


class OutputSegment(NamedTuple):
    """Server → worker: the output segment to write to now, smaller than asked if none fit."""

    name: str | None
    size: int


class Outputs(NamedTuple):
    """Worker → server: the batch's outputs lie in the output segment at these placements."""

    placements: tuple[Placement, ...]


class Failure(NamedTuple):
    """What went wrong, by kind: a ModelportError's class name, or a builtin's."""

    kind: str
    message: str
    modelport: bool


class Ready(NamedTuple):
    """Worker → server, once: the model loaded; the server serves its signature."""

    native: ModelSignature
    pid: int


class Record(NamedTuple):
    """Worker → server: a log record, flattened (frames and arbitrary extras do not pickle)."""

    logger: str
    level: int
    message: str
    traceback: str | None
    extra: dict[str, Any]
