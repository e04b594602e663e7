"""Sequences in a node of several workers: each sequence lives on one worker.

A sequence model keeps state between a sequence's requests (its slot, its
implicit state tensors), and the kernel gives each connection to whichever
worker it picks. So every sequence has an owner, worked out from its id
alone (the same answer on every worker, no lookup): an integer id modulo
the worker count, a string id by its hash. A request that reaches another
worker is passed to the owner over the node's bus and runs there, on the
owner's copy of the version; the answer comes back the same way. Admission,
validation and the observers ran on the worker the client reached, as for
any request.

The tensors cross as raw bytes in base64 (BYTES elements one by one), which
costs a copy each way: sequence requests are small steps, and a sequence
kept on one connection (tritonclient's gRPC stream) often lands on its
owner anyway.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import numpy as np

from modelport import errors
from modelport.config.model import ModelConfig
from modelport.dataplane.servable import Outcome
from modelport.errors import ModelLoadError, ModelportError, Unavailable
from modelport.node.bus import Peers
from modelport.types import (
    DTYPES,
    Call,
    InferenceRequest,
    InferenceResponse,
    Origin,
    RequestedOutput,
    Tensor,
)

#: Seconds a forwarded step may take when its call sets no deadline.
STEP_WAIT_S = 300.0


def owner_of(sequence_id: int | str, workers: int) -> int:
    """The index of the worker that holds sequence ``sequence_id``."""
    if isinstance(sequence_id, int):
        return sequence_id % workers
    digest = hashlib.blake2b(sequence_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % workers


def encode_tensor(tensor: Tensor) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": tensor.name,
        "datatype": tensor.datatype,
        "shape": list(tensor.shape),
        "parameters": tensor.parameters,
    }
    if tensor.datatype == "BYTES":
        items = [bytes(x) if not isinstance(x, str) else x.encode() for x in tensor.data.flat]
        out["items"] = [base64.b64encode(item).decode() for item in items]
    else:
        data = np.ascontiguousarray(tensor.data, dtype=DTYPES[tensor.datatype])
        out["raw"] = base64.b64encode(data.tobytes()).decode()
    return out


def decode_tensor(found: dict[str, Any]) -> Tensor:
    datatype = str(found["datatype"])
    shape = tuple(int(n) for n in found["shape"])
    if datatype == "BYTES":
        items = [base64.b64decode(item) for item in found["items"]]
        data = np.empty(len(items), dtype=object)
        data[:] = items
        array = data.reshape(shape)
    else:
        raw = base64.b64decode(found["raw"])
        array = np.frombuffer(raw, dtype=DTYPES[datatype]).reshape(shape)
    return Tensor(str(found["name"]), datatype, shape, array, dict(found.get("parameters", {})))


def encode_request(request: InferenceRequest) -> dict[str, Any]:
    return {
        "model_name": request.model_name,
        "model_version": request.model_version,
        "inputs": [encode_tensor(t) for t in request.inputs],
        "outputs": (
            None
            if request.outputs is None
            else [{"name": o.name, "parameters": o.parameters} for o in request.outputs]
        ),
        "id": request.id,
        "parameters": request.parameters,
        "priority": request.priority,
        "timeout_us": request.timeout_us,
    }


def decode_request(found: dict[str, Any]) -> InferenceRequest:
    outputs = found.get("outputs")
    return InferenceRequest(
        model_name=str(found["model_name"]),
        model_version=found.get("model_version"),
        inputs=[decode_tensor(t) for t in found["inputs"]],
        outputs=(
            None
            if outputs is None
            else [RequestedOutput(str(o["name"]), dict(o.get("parameters", {}))) for o in outputs]
        ),
        id=found.get("id"),
        parameters=dict(found.get("parameters", {})),
        priority=int(found.get("priority", 0)),
        timeout_us=found.get("timeout_us"),
    )


def encode_outcome(outcome: Outcome) -> dict[str, Any]:
    response = outcome.response
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": [encode_tensor(t) for t in response.outputs],
        "id": response.id,
        "parameters": response.parameters,
        "timings": [
            outcome.queue_ns,
            outcome.compute_ns,
            outcome.batch_size,
            outcome.input_ns,
            outcome.output_ns,
        ],
    }


def decode_outcome(found: dict[str, Any]) -> Outcome:
    response = InferenceResponse(
        model_name=str(found["model_name"]),
        model_version=str(found["model_version"]),
        outputs=[decode_tensor(t) for t in found["outputs"]],
        id=found.get("id"),
        parameters=dict(found.get("parameters", {})),
    )
    queue_ns, compute_ns, batch_size, input_ns, output_ns = (int(n) for n in found["timings"])
    return Outcome(response, queue_ns, compute_ns, batch_size, input_ns, output_ns)


def _error(kind: str, message: str) -> ModelportError:
    """The owner's error as the same type, so the caller gets the same status."""
    found = getattr(errors, kind, None)
    if isinstance(found, type) and issubclass(found, ModelportError):
        try:
            return found(message)
        except TypeError:
            pass  # a type built from more than a message
    return Unavailable(message)


async def step_on(
    peers: Peers,
    owner: int,
    model: str,
    version: str,
    call: Call | None,
    request: InferenceRequest,
    gone: ModelportError,
) -> Outcome:
    """Run ``request`` on worker ``owner``'s copy of the version, within the call's
    deadline; ``gone`` is raised when that worker is not there."""
    wait_s = STEP_WAIT_S
    if call is not None and call.deadline_ns is not None:
        wait_s = max(0.001, (call.deadline_ns - time.monotonic_ns()) / 1e9)
    body = {"model": model, "version": version, "request": encode_request(request)}
    reply = await peers.ask(owner, "step", {**body, "wait_s": wait_s}, wait_s + 1.0)
    if reply is None:
        raise gone
    if not reply.ok:
        raise _error(reply.kind, reply.error)
    return decode_outcome(reply.result)


class SequenceRouter:
    """Sends a sequence's step to the worker that holds the sequence."""

    def __init__(self, peers: Peers, index: int, workers: int) -> None:
        self.peers = peers
        self.index = index
        self.workers = workers

    def mine(self, sequence_id: int | str) -> bool:
        return owner_of(sequence_id, self.workers) == self.index

    async def execute(
        self,
        model: str,
        version: str,
        sequence_id: int | str,
        call: Call | None,
        request: InferenceRequest,
    ) -> Outcome:
        gone = Unavailable(
            f"the worker holding sequence {sequence_id!r} is restarting; "
            "its state is gone: start the sequence again"
        )
        owner = owner_of(sequence_id, self.workers)
        return await step_on(self.peers, owner, model, version, call, request, gone)


class HostedElsewhere:
    """The servable of a version with process instances that another worker hosts:
    every request runs there (see ``ProcessHost``)."""

    __slots__ = ("label", "model", "owner", "peers", "version")

    def __init__(self, peers: Peers, owner: int, model: str, version: str) -> None:
        self.peers = peers
        self.owner = owner
        self.model = model
        self.version = version
        self.label = f"model {model!r} version {version}"

    async def execute(self, call: Call | None, request: InferenceRequest) -> Outcome:
        gone = Unavailable(
            f"{self.label} is hosted by worker {self.owner}, which is restarting",
            retry_after_s=1.0,
        )
        return await step_on(self.peers, self.owner, self.model, self.version, call, request, gone)

    def refusal(self) -> ModelportError | None:
        return None  # the host refuses for itself

    async def drain_and_close(self) -> None:
        return None  # nothing computes here


class ProcessHost:
    """Models with process instances, hosted once per node (``lifecycle.ProcessHost``).

    The host of a model is worked out from its name, as a sequence's owner is
    from its id; a non-host waits for the host's copy to load and serves the
    version with the host's completed config.
    """

    def __init__(self, peers: Peers, index: int, workers: int, wait_s: float) -> None:
        self.peers = peers
        self.index = index
        self.workers = workers
        self.wait_s = wait_s

    def mine(self, name: str) -> bool:
        return owner_of(name, self.workers) == self.index

    def outline(self, name: str, version: int) -> ModelConfig:
        owner = owner_of(name, self.workers)
        body = {"model": name, "version": str(version)}
        deadline = time.monotonic() + self.wait_s
        why = "it did not answer"
        while time.monotonic() < deadline:
            reply = self.peers.ask_blocking(owner, "outline", body, 10.0)
            if reply is not None and reply.ok and isinstance(reply.result, dict):
                return ModelConfig.model_validate(reply.result)
            if reply is not None:
                why = reply.error
            time.sleep(0.2)
        raise ModelLoadError(
            f"hosted by worker {owner} of the node (process instances), which did not "
            f"load it within {self.wait_s:g} s: {why}"
        )

    def servable(self, name: str, version: int) -> HostedElsewhere:
        return HostedElsewhere(self.peers, owner_of(name, self.workers), name, str(version))


async def outline(table: Any, body: dict[str, Any]) -> dict[str, Any]:
    """The host's side of ``ProcessHost.outline``: the loaded version's config."""
    model = table.acquire(str(body["model"]), str(body["version"]))
    config: dict[str, Any] = model.config.model_dump(mode="json")
    return config


async def run_step(table: Any, body: dict[str, Any]) -> dict[str, Any]:
    """The owner's side: run a forwarded step on its own copy of the version."""
    request = decode_request(body["request"])
    model = table.acquire(str(body["model"]), str(body["version"]))
    wait_s = float(body.get("wait_s", STEP_WAIT_S))
    call = Call(Origin.STEP, deadline_ns=time.monotonic_ns() + int(wait_s * 1e9))
    outcome = await model.servable.execute(call, request)
    return encode_outcome(outcome)
