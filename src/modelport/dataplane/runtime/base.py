"""The one interface every backend implements.

A runtime is loaded from a version directory, reports its own inputs and outputs, and
computes a whole batch at a time. It is synchronous and keeps no request
state: the scheduler owns threads, queues and batching, so a backend stays a
few dozen lines and can be faked in tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from modelport.config.model import ModelConfig
from modelport.types import Array, ModelSignature


class Runtime(Protocol):
    """A loaded model version that can compute."""

    @property
    def native(self) -> ModelSignature:
        """The model's own inputs and outputs: full shapes, -1 where dynamic.

        The control plane completes a model's configuration from this when
        config.yaml leaves inputs or outputs out, and checks it otherwise.
        """
        ...

    @property
    def inline_safe(self) -> bool:
        """Whether a small batch may compute on the event loop's thread.

        True only for compiled-graph execution whose time is bounded by its
        input and that never blocks on I/O, locks or other threads (ONNX
        Runtime, OpenVINO): the loop serves every other request while it
        runs. The scheduler still runs a batch there only while the
        version's recent executions were cheap (see scheduling/placement.py).
        """
        ...

    @property
    def pin_safe(self) -> bool:
        """Whether the runtime computes on the calling thread alone.

        Then an instance thread may be pinned to a core of its own
        (scheduling/cores.py) without a library's own threads inheriting
        that single core, and an execution's cost is the thread's CPU time.
        """
        ...

    def predict(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        """Compute ``outputs`` for one batch; arrays in, arrays out."""
        ...

    def unload(self) -> None:
        """Release the model's memory; the runtime is not used afterwards."""
        ...


class RuntimeLoader(Protocol):
    """Builds a runtime from a version directory and its validated config.

    ``instances`` is how many batches will run at once, so a backend can
    size its own thread pools without oversubscribing the cores.
    """

    def __call__(self, version_dir: Path, config: ModelConfig, instances: int) -> Runtime: ...
