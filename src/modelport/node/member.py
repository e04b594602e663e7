"""What a worker knows of the node it belongs to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class NodeMember:
    """One front-end worker of a node started with ``--workers N``."""

    index: int
    """0 … count-1; a restarted worker keeps the index of the one it replaces."""
    count: int
    directory: Path
    """The node's private directory: the workers' bus sockets and the lease file."""
    ready: Callable[[], None]
    """Tells the supervisor this worker serves (every port up, models loaded)."""
    restarted: bool = False
    """Started in place of a worker that ended: it copies the node's state from a peer."""
