"""until_disconnect: a hung-up caller's work is cancelled, by the connection or by a watcher."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from modelport.dataplane.transport.http.body import ClientDisconnected
from modelport.dataplane.transport.http.disconnect import (
    CONNECTION_SCOPE_KEY,
    HangupWatch,
    until_disconnect,
)


async def _never_receive() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def test_a_connection_that_hangs_up_cancels_the_work_and_says_why() -> None:
    async def scenario() -> tuple[bool, bool]:
        connection = HangupWatch()
        started = asyncio.Event()
        cancelled = False

        async def work() -> str:
            nonlocal cancelled
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled = True
                raise
            return "never"

        scope = {CONNECTION_SCOPE_KEY: connection}
        task = asyncio.ensure_future(until_disconnect(scope, _never_receive, work()))
        await started.wait()
        connection.hung_up()
        with pytest.raises(ClientDisconnected):
            await task
        return cancelled, connection.lost

    assert asyncio.run(scenario()) == (True, True)


def test_work_that_finishes_returns_and_releases_the_connection() -> None:
    async def scenario() -> str:
        connection = HangupWatch()

        async def work() -> str:
            return "answer"

        result = await until_disconnect({CONNECTION_SCOPE_KEY: connection}, _never_receive, work())
        connection.hung_up()  # after the answer: nothing left to cancel
        return result

    assert asyncio.run(scenario()) == "answer"


def test_a_connection_already_gone_never_starts_the_work() -> None:
    async def scenario() -> bool:
        connection = HangupWatch()
        connection.hung_up()
        ran = False

        async def work() -> None:
            nonlocal ran
            ran = True

        with pytest.raises(ClientDisconnected):
            await until_disconnect({CONNECTION_SCOPE_KEY: connection}, _never_receive, work())
        return ran

    assert asyncio.run(scenario()) is False


def test_other_cancellations_propagate_unchanged() -> None:
    async def scenario() -> None:
        connection = HangupWatch()
        started = asyncio.Event()

        async def work() -> None:
            started.set()
            await asyncio.Event().wait()

        scope = {CONNECTION_SCOPE_KEY: connection}
        task = asyncio.ensure_future(until_disconnect(scope, _never_receive, work()))
        await started.wait()
        task.cancel()  # a server shutdown, not the client
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_without_the_connection_a_watcher_reads_the_disconnect_message() -> None:
    async def scenario() -> None:
        messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def receive() -> dict[str, Any]:
            return await messages.get()

        started = asyncio.Event()

        async def work() -> None:
            started.set()
            await asyncio.Event().wait()

        task = asyncio.ensure_future(until_disconnect({}, receive, work()))
        await started.wait()
        await messages.put({"type": "http.disconnect"})
        with pytest.raises(ClientDisconnected):
            await task

    asyncio.run(scenario())
