"""Telling the rest of the node about a change made here.

A change an operator makes through one worker of a node (a model loaded,
a traffic policy written, a canary's step) must hold on every worker. The
control plane calls an ``Announce`` after the change is in effect here and
stored; a single-process server's announce does nothing. The node's
announce raises a ModelportError when a worker could not follow a change
the caller must hear about (a model that did not load everywhere).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Announce = Callable[[str, dict[str, Any]], Awaitable[None]]


async def nobody(op: str, body: dict[str, Any]) -> None:
    """A server of one process has nobody to tell."""
    return None
