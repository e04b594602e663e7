"""Decoupled python models: the runtime's streams, the streaming servable, the generate codec."""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from modelport.config.model import ModelConfig, parse_model_config
from modelport.controlplane.lifecycle import refuse_unstreamable
from modelport.dataplane.runtime.python import PythonRuntime, load_python
from modelport.dataplane.servable import Servable
from modelport.dataplane.streaming import StreamingServable, StreamTarget, streaming
from modelport.dataplane.table import ModelVersion
from modelport.dataplane.transport.http.routes_generate import (
    generate_json,
    generate_request,
    sse_event,
)
from modelport.errors import (
    ConfigError,
    DeadlineExceeded,
    InferenceFailed,
    InvalidRequest,
    ModelLoadError,
    Unsupported,
)
from modelport.observability.statistics import ModelStatistics
from modelport.types import (
    Call,
    InferenceRequest,
    InferenceResponse,
    ModelSignature,
    Origin,
    Tensor,
    TensorSpec,
)

SIGNATURE: dict[str, Any] = {
    "max_batch_size": 0,
    "input": [{"name": "n", "data_type": "TYPE_INT32", "dims": [1]}],
    "output": [{"name": "i", "data_type": "TYPE_INT32", "dims": [1]}],
}

# Yields n responses; leaves a file per response and one when the generator closes.
COUNTING = """
    import time
    import numpy as np

    class Model:
        def load(self, version_dir, config):
            self.dir = version_dir

        def predict(self, inputs):
            try:
                for i in range(int(inputs["n"][0])):
                    (self.dir / f"computed-{i}").touch()
                    yield {"i": np.array([i], dtype=np.int32)}
                    time.sleep(0.01)
            finally:
                (self.dir / "closed").touch()
"""


def config(decoupled: bool = True, **fields: Any) -> ModelConfig:
    policy = {"model_transaction_policy": {"decoupled": decoupled}}
    return parse_model_config({"name": "m", **SIGNATURE, **policy, **fields}, "config.yaml")


def write_model(tmp_path: Path, source: str) -> Path:
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True, exist_ok=True)
    (version / "model.py").write_text(textwrap.dedent(source))
    return version


def n_input(n: int) -> dict[str, Any]:
    return {"n": np.array([n], dtype=np.int32)}


def freed_counter() -> tuple[list[int], Any]:
    freed: list[int] = []
    return freed, lambda: freed.append(1)


async def drain(runtime: PythonRuntime, n: int) -> list[Any]:
    stream = runtime.stream(n_input(n), ["i"], lambda: None)
    got = []
    while (item := await stream.next()) is not None:
        got.append(item)
    stream.close()
    return got


def wait_for(condition: Any, seconds: float = 2.0) -> None:
    end = time.monotonic() + seconds
    while not condition() and time.monotonic() < end:
        time.sleep(0.01)


# ------------------------------------------------------------------ runtime streams


def test_a_generator_predict_streams_each_response(tmp_path: Path) -> None:
    runtime = load_python(write_model(tmp_path, COUNTING), config(), 1)
    try:
        got = asyncio.run(drain(runtime, 3))
        assert [int(r["i"][0]) for r in got] == [0, 1, 2]
        assert all(r["i"].dtype == np.int32 for r in got)
    finally:
        runtime.unload()


def test_closing_a_stream_closes_the_generator_and_frees_the_instance(tmp_path: Path) -> None:
    version = write_model(tmp_path, COUNTING)
    runtime = load_python(version, config(), 1)
    freed, on_freed = freed_counter()

    async def two_then_close() -> None:
        stream = runtime.stream(n_input(1000), ["i"], on_freed)
        await stream.next()
        await stream.next()
        stream.close()

    try:
        asyncio.run(two_then_close())
        wait_for(lambda: freed)
        assert freed == [1]
        assert (version / "closed").exists()
        assert len(list(version.glob("computed-*"))) == 2  # nothing computed ahead
        assert asyncio.run(drain(runtime, 1))  # the instance serves again
    finally:
        runtime.unload()


def test_a_model_raising_mid_stream_fails_by_type_only(tmp_path: Path) -> None:
    source = """
        import numpy as np

        class Model:
            def predict(self, inputs):
                yield {"i": np.array([0], dtype=np.int32)}
                raise KeyError("secret")
    """
    runtime = load_python(write_model(tmp_path, source), config(), 1)
    try:
        with pytest.raises(InferenceFailed) as failed:
            asyncio.run(drain(runtime, 1))
        assert failed.value.message == "model m raised KeyError"
    finally:
        runtime.unload()


def test_a_yielded_response_is_checked_like_a_returned_one(tmp_path: Path) -> None:
    source = """
        import numpy as np

        class Model:
            def predict(self, inputs):
                yield {"i": np.array([0.5], dtype=np.float64)}
    """
    runtime = load_python(write_model(tmp_path, source), config(), 1)
    try:
        with pytest.raises(InferenceFailed, match="output 'i'"):
            asyncio.run(drain(runtime, 1))
    finally:
        runtime.unload()


@pytest.mark.parametrize(
    ("source", "decoupled", "says"),
    [
        (
            "class Model:\n    def predict(self, inputs):\n        return {}\n",
            True,
            "model_transaction_policy.decoupled is true",
        ),
        (
            "class Model:\n    def predict(self, inputs):\n        yield {}\n",
            False,
            "model_transaction_policy: {decoupled: true}",
        ),
        (
            "class Model:\n    async def predict(self, inputs):\n        yield {}\n",
            True,
            "async def",
        ),
    ],
)
def test_predict_must_match_the_transaction_policy(
    tmp_path: Path, source: str, decoupled: bool, says: str
) -> None:
    version = write_model(tmp_path, source)
    with pytest.raises(ModelLoadError) as refused:
        load_python(version, config(decoupled), 1)
    assert str(version / "model.py") in refused.value.message
    assert says in refused.value.message


# ------------------------------------------------------------------ the servable


def request(n: int) -> InferenceRequest:
    data = np.array([n], dtype=np.int32)
    return InferenceRequest("m", None, [Tensor("n", "INT32", (1,), data)], id="r")


class Collect:
    def __init__(self) -> None:
        self.responses: list[InferenceResponse] = []

    async def send(self, response: InferenceResponse) -> None:
        self.responses.append(response)


def servable(tmp_path: Path, instances: int = 1) -> StreamingServable:
    runtime = load_python(write_model(tmp_path, COUNTING), config(), instances)
    signature = ModelSignature(
        inputs=(TensorSpec("n", "INT32", (1,)),), outputs=(TensorSpec("i", "INT32", (1,)),)
    )
    return StreamingServable(runtime, "m", "1", signature)


def test_the_servable_streams_to_its_target_and_ends_empty(tmp_path: Path) -> None:
    serving = servable(tmp_path)
    sink = Collect()

    async def run() -> InferenceResponse:
        with streaming(StreamTarget("m", sink)) as target:
            outcome = await serving.execute(None, request(3))
        assert target.claimed and target.responses == 3
        await serving.drain_and_close()
        return outcome.response

    end = asyncio.run(run())
    assert end.outputs == [] and end.id == "r"
    assert [int(r.outputs[0].data[0]) for r in sink.responses] == [0, 1, 2]
    assert all(r.model_version == "1" and r.id == "r" for r in sink.responses)


def test_the_servable_refuses_a_call_that_cannot_stream(tmp_path: Path) -> None:
    serving = servable(tmp_path)

    async def run() -> None:
        try:
            with streaming(StreamTarget("other", Collect())):
                await serving.execute(None, request(1))
        finally:
            await serving.drain_and_close()

    with pytest.raises(Unsupported, match="ModelStreamInfer"):
        asyncio.run(run())


def test_a_stream_holds_its_instance_until_it_ends(tmp_path: Path) -> None:
    serving = servable(tmp_path, instances=1)

    async def run() -> None:
        first = asyncio.create_task(stream_of(serving, 30))
        await asyncio.sleep(0.05)
        deadline = time.monotonic_ns() + 20_000_000
        with pytest.raises(DeadlineExceeded), streaming(StreamTarget("m", Collect())):
            await serving.execute(Call(Origin.GRPC, deadline_ns=deadline), request(1))
        await first
        await serving.drain_and_close()

    asyncio.run(run())


async def stream_of(serving: StreamingServable, n: int) -> None:
    with streaming(StreamTarget("m", Collect())):
        await serving.execute(None, request(n))


# ------------------------------------------------------------------ generate codec


def version(batching: bool) -> ModelVersion:
    batch = (-1,) if batching else ()
    signature = ModelSignature(
        inputs=(
            TensorSpec("text_input", "BYTES", (*batch, 1)),
            TensorSpec("ids", "INT64", (*batch, -1)),
        ),
        outputs=(TensorSpec("text_output", "BYTES", (*batch, 1)),),
        max_batch_size=8 if batching else 0,
    )
    cfg = parse_model_config({"name": "m", "max_batch_size": 8 if batching else 0}, "c")
    return ModelVersion("m", "1", "python", signature, cfg, cast(Servable, None), ModelStatistics())


def test_generate_fields_become_tensors_and_parameters() -> None:
    payload = {"text_input": "hi", "ids": [1, 2, 3], "temperature": 0.5, "parameters": {"k": 2}}
    req = generate_request(payload, version(batching=True), "m", None)
    tensors = {t.name: t for t in req.inputs}
    assert tensors["text_input"].shape == (1, 1)
    assert tensors["text_input"].data.tolist() == [[b"hi"]]
    assert tensors["ids"].shape == (1, 3)
    assert tensors["ids"].data.dtype == np.int64
    assert req.parameters == {"k": 2, "temperature": 0.5}
    unbatched = generate_request({"text_input": "hi"}, version(batching=False), "m", "1")
    assert unbatched.inputs[0].shape == (1,)


@pytest.mark.parametrize(
    "payload",
    [["not", "an", "object"], {"text_input": ["a", "b"]}, {"extra": [1]}, {"parameters": 3}],
)
def test_generate_requests_that_do_not_fit_are_refused(payload: Any) -> None:
    with pytest.raises(InvalidRequest):
        generate_request(payload, version(batching=False), "m", None)


def test_generate_json_has_outputs_by_name() -> None:
    response = InferenceResponse(
        "m",
        "1",
        [
            Tensor("text_output", "BYTES", (1,), np.array([b"tok"], dtype=object)),
            Tensor("scores", "FP32", (2,), np.array([0.5, 1.5], dtype=np.float32)),
        ],
    )
    assert generate_json(response) == {
        "model_name": "m",
        "model_version": "1",
        "text_output": "tok",
        "scores": [0.5, 1.5],
    }


def test_an_sse_event_is_one_data_line_and_a_blank_line() -> None:
    assert sse_event({"text_output": "a\nb"}) == b'data: {"text_output":"a\\nb"}\n\n'


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"backend": "onnxruntime"}, "only 'backend: python' models stream"),
        ({"modelport": {"instance_process": True}}, "in-process"),
        ({"response_cache": {"enable": True}}, "cannot be cached"),
    ],
)
def test_what_cannot_stream_is_refused_naming_the_field(fields: dict[str, Any], says: str) -> None:
    cfg = config(**{"backend": "python", **fields})
    with pytest.raises(ConfigError) as refused:
        refuse_unstreamable(cfg, "models/m/config.yaml")
    assert refused.value.message.startswith(
        "models/m/config.yaml: model_transaction_policy.decoupled: "
    )
    assert says in refused.value.message
