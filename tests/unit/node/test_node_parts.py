"""The node's parts on their own: the sequence owner, the bus codec, the bus, the lease."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from modelport.dataplane.servable import Outcome
from modelport.errors import NotFound
from modelport.node.bus import BusServer, Peers
from modelport.node.forward import (
    decode_outcome,
    decode_request,
    encode_outcome,
    encode_request,
    owner_of,
)
from modelport.node.lease import Lease
from modelport.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor


def test_a_sequence_has_one_owner_the_same_on_every_worker() -> None:
    assert [owner_of(n, 3) for n in range(6)] == [0, 1, 2, 0, 1, 2]
    assert owner_of("basket-a", 4) == owner_of("basket-a", 4)
    spread = {owner_of(f"user-{n}", 4) for n in range(64)}
    assert spread == {0, 1, 2, 3}


def test_requests_and_answers_cross_the_bus_unchanged() -> None:
    words = np.empty(2, dtype=object)
    words[:] = [b"caf\xc3\xa9", b""]
    request = InferenceRequest(
        "m",
        "2",
        [
            Tensor("x", "FP16", (2, 3), np.arange(6, dtype=np.float16).reshape(2, 3)),
            Tensor("w", "BYTES", (2,), words, {"binary_data": True}),
        ],
        outputs=[RequestedOutput("y", {"classification": 2})],
        id="r1",
        parameters={"sequence_id": "s", "sequence_start": True},
        priority=2,
        timeout_us=5000,
    )
    back = decode_request(encode_request(request))
    assert (back.model_name, back.model_version, back.id) == ("m", "2", "r1")
    assert back.parameters == request.parameters
    assert (back.priority, back.timeout_us) == (2, 5000)
    assert back.outputs == request.outputs
    np.testing.assert_array_equal(back.inputs[0].data, request.inputs[0].data)
    assert back.inputs[0].data.dtype == np.float16
    assert list(back.inputs[1].data) == [b"caf\xc3\xa9", b""]
    assert back.inputs[1].parameters == {"binary_data": True}
    response = InferenceResponse("m", "2", [Tensor("y", "INT64", (1,), np.array([7]))], "r1")
    outcome = decode_outcome(encode_outcome(Outcome(response, 10, 20, 4, 1, 2)))
    assert (outcome.queue_ns, outcome.compute_ns, outcome.batch_size) == (10, 20, 4)
    assert outcome.response.outputs[0].data.tolist() == [7]


async def _answer(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("fail"):
        raise NotFound("no such thing")
    return {"echo": body}


def test_a_message_reaches_every_other_worker_and_errors_keep_their_type(tmp_path: Path) -> None:
    async def scenario() -> None:
        servers = [BusServer(tmp_path, i, {"echo": _answer}) for i in range(3)]
        for server in servers:
            await server.start()
        assert oct((tmp_path / "w1.sock").stat().st_mode & 0o777) == "0o600"
        peers = Peers(tmp_path, 0)
        assert peers.indices() == [1, 2]
        replies = await peers.broadcast("echo", {"n": 1})
        assert sorted(r.worker for r in replies) == [1, 2]
        assert all(r.ok and r.result == {"echo": {"n": 1}} for r in replies)
        failed = await peers.ask(1, "echo", {"fail": True}, 5)
        assert failed is not None and not failed.ok
        assert (failed.kind, failed.error) == ("NotFound", "no such thing")
        unknown = await peers.ask(1, "nothing", {}, 5)
        assert unknown is not None and not unknown.ok
        # A worker that is gone is absent, not an error.
        await servers[2].close()
        assert [r.worker for r in await peers.broadcast("echo", {})] == [1]
        (tmp_path / "w7.sock").touch()  # a dead worker's leftover file
        assert await peers.ask(7, "echo", {}, 5) is None
        for server in servers[:2]:
            await server.close()

    asyncio.run(scenario())


def test_one_worker_holds_the_lease_until_it_lets_go(tmp_path: Path) -> None:
    first, second = Lease(tmp_path / "lease"), Lease(tmp_path / "lease")
    assert first.try_take()
    assert not second.try_take()
    first.release()
    assert second.try_take()
    second.release()


def test_waiting_for_the_lease_ends_when_the_server_stops(tmp_path: Path) -> None:
    async def scenario() -> bool:
        holder = Lease(tmp_path / "lease")
        assert holder.try_take()
        stop = asyncio.Event()
        waiting = asyncio.create_task(Lease(tmp_path / "lease", retry_s=0.01).take(stop))
        await asyncio.sleep(0.05)
        stop.set()
        return await waiting

    assert asyncio.run(scenario()) is False
