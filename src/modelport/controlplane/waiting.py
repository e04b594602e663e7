"""Waiting in background loops: until stopped, woken, or a period passes."""

from __future__ import annotations

import asyncio


async def wait_any(stop: asyncio.Event, wake: asyncio.Event | None, seconds: float | None) -> None:
    """Until ``stop`` or ``wake`` is set, or ``seconds`` pass (None: no time limit).

    Background loops (the job runner, job callbacks, the canary controller)
    sleep here, so work arriving wakes them at once while shutdown never waits
    for a period to end.
    """
    waits = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waits.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()
