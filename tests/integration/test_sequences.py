"""Sequence batching (Triton's ``sequence_batching``) through both standard clients.

``controls`` is an ONNX model whose outputs show what the server filled into
its control inputs: ``OUTPUT = INPUT * READY + 1000 * START + 10000 * END``
and ``CORRID_OUT = CORRID``, so every answer proves the flags and the id
its request carried. It batches two rows on one instance (direct strategy:
two slots), so the second sequence rides row 1 of batches whose row 0 is
padding. ``accumulator`` keeps a running sum in implicit state.
``one_slot`` has a single slot and a short idle timeout.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Server, start_server, stop_server
from tests.integration.models import _save, identity_model

pytestmark = pytest.mark.integration

CONTROLS = """\
max_batch_size: 2
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "CORRID_OUT" data_type: TYPE_INT64 dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
sequence_batching {
  max_sequence_idle_microseconds: %d
  direct { }
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_INT64 } ] }
  ]
}
"""

ACCUMULATOR = """\
max_batch_size: 4
sequence_batching {
  oldest { max_candidate_sequences: 8 }
  state [
    {
      input_name: "STATE_IN"
      output_name: "STATE_OUT"
      data_type: TYPE_FP32
      dims: [ 1 ]
      initial_state: [ { data_type: TYPE_FP32 dims: [ 1 ] zero_data: true name: "zeros" } ]
    }
  ]
}
"""


def controls_model(shape: tuple[str | int, ...] = ("batch", 1)) -> onnx.ModelProto:
    """Every tensor of ``shape``: list(shape) for a batching model, [1] for one that is not."""
    i32 = TensorProto.INT32

    def const(name: str, value: int) -> Any:
        return helper.make_tensor(name, i32, [], [value])

    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["INPUT", "READY"], ["shown"]),
            helper.make_node("Mul", ["START", "k1000"], ["s"]),
            helper.make_node("Mul", ["END", "k10000"], ["e"]),
            helper.make_node("Add", ["shown", "s"], ["se"]),
            helper.make_node("Add", ["se", "e"], ["OUTPUT"]),
            helper.make_node("Identity", ["CORRID"], ["CORRID_OUT"]),
        ],
        "controls",
        [
            helper.make_tensor_value_info(n, i32, list(shape))
            for n in ("INPUT", "START", "END", "READY")
        ]
        + [helper.make_tensor_value_info("CORRID", TensorProto.INT64, list(shape))],
        [
            helper.make_tensor_value_info("OUTPUT", i32, list(shape)),
            helper.make_tensor_value_info("CORRID_OUT", TensorProto.INT64, list(shape)),
        ],
        initializer=[const("k1000", 1000), const("k10000", 10000)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def accumulator_model() -> onnx.ModelProto:
    """OUTPUT = STATE_IN + INPUT; STATE_OUT = OUTPUT (the running sum, kept by the server)."""
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["STATE_IN", "INPUT"], ["OUTPUT"]),
            helper.make_node("Identity", ["OUTPUT"], ["STATE_OUT"]),
        ],
        "accumulator",
        [
            helper.make_tensor_value_info("INPUT", f, ["batch", 1]),
            helper.make_tensor_value_info("STATE_IN", f, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("OUTPUT", f, ["batch", 1]),
            helper.make_tensor_value_info("STATE_OUT", f, ["batch", 1]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("seqrepo")
    _save(controls_model(), root / "controls" / "1" / "model.onnx")
    (root / "controls" / "config.pbtxt").write_text(CONTROLS % 5_000_000)
    one = CONTROLS.replace("max_batch_size: 2", "max_batch_size: 1") % 300_000
    _save(controls_model(), root / "one_slot" / "1" / "model.onnx")
    (root / "one_slot" / "config.pbtxt").write_text(one)
    _save(accumulator_model(), root / "accumulator" / "1" / "model.onnx")
    (root / "accumulator" / "config.pbtxt").write_text(ACCUMULATOR)
    _save(identity_model("FP32"), root / "stateless" / "1" / "model.onnx")
    srv = start_server(root, tmp_path_factory.mktemp("seqlog") / "server.log")
    yield srv
    stop_server(srv)


def _inputs(module: Any, value: int, batching: bool = True) -> list[Any]:
    array = np.array([[value]] if batching else [value], dtype=np.int32)
    inp = module.InferInput("INPUT", list(array.shape), "INT32")
    inp.set_data_from_numpy(array)
    return [inp]


def _send(client: Any, module: Any, model: str, sid: int | str, value: int, **flags: Any) -> Any:
    batching = model != "flat"
    result = client.infer(model, _inputs(module, value, batching), sequence_id=sid, **flags)
    output, corrid = result.as_numpy("OUTPUT"), result.as_numpy("CORRID_OUT")
    return int(output.reshape(-1)[0]), int(corrid.reshape(-1)[0])


def test_metadata_lists_only_client_inputs(server: Server) -> None:
    meta = httpx.get(f"{server.base}/v2/models/controls", timeout=10).json()
    assert [i["name"] for i in meta["inputs"]] == ["INPUT"]
    assert {o["name"] for o in meta["outputs"]} == {"OUTPUT", "CORRID_OUT"}
    acc = httpx.get(f"{server.base}/v2/models/accumulator", timeout=10).json()
    assert [i["name"] for i in acc["inputs"]] == ["INPUT"]
    assert [o["name"] for o in acc["outputs"]] == ["OUTPUT"]
    config = httpx.get(f"{server.base}/v2/models/controls/config", timeout=10).json()
    assert "sequence_batching" in config
    assert "dynamic_batching" not in config
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        got = grpc.get_model_config("controls").config.sequence_batching
        assert [c.name for c in got.control_input] == ["START", "END", "READY", "CORRID"]
    finally:
        grpc.close()


def test_two_interleaved_sequences_over_http(server: Server) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        a, b = 101, 202
        assert _send(client, httpclient, "controls", a, 1, sequence_start=True) == (1001, a)
        assert _send(client, httpclient, "controls", b, 2, sequence_start=True) == (1002, b)
        assert _send(client, httpclient, "controls", a, 3) == (3, a)
        assert _send(client, httpclient, "controls", b, 4) == (4, b)
        assert _send(client, httpclient, "controls", b, 5, sequence_end=True) == (10005, b)
        assert _send(client, httpclient, "controls", a, 6, sequence_end=True) == (10006, a)
        # Both ended: neither takes another request.
        for sid in (a, b):
            with pytest.raises(InferenceServerException) as info:
                _send(client, httpclient, "controls", sid, 7)
            assert info.value.status() == "400"
            assert f"sequence {sid} is not active" in str(info.value)
        stats = client.get_inference_statistics("controls")["model_stats"][0]
        # The second sequence held row 1 of its instance's batches: batches of two rows,
        # the first a READY=0 padding row (its OUTPUT would be 0 + flags, never returned).
        assert {b["batch_size"] for b in stats["batch_stats"]} == {1, 2}
    finally:
        client.close()


def test_a_start_and_end_in_one_request(server: Server) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        got = _send(client, httpclient, "controls", 9, 5, sequence_start=True, sequence_end=True)
        assert got == (11005, 9)
    finally:
        client.close()


def test_string_sequence_ids_need_a_string_corrid(server: Server) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        with pytest.raises(InferenceServerException) as info:
            _send(client, httpclient, "controls", "session-1", 1, sequence_start=True)
        assert "integer sequence ids" in str(info.value)
    finally:
        client.close()


def test_grpc_stream_keeps_each_sequence_in_order(server: Server) -> None:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        plan = [
            (31, 1, True, False),
            (32, 2, True, False),
            (31, 3, False, False),
            (32, 4, False, False),
            (31, 5, False, True),
            (32, 6, False, True),
        ]
        for sid, value, start, end in plan:
            client.async_stream_infer(
                "controls",
                _inputs(grpcclient, value),
                request_id=f"{sid}-{value}",
                sequence_id=sid,
                sequence_start=start,
                sequence_end=end,
            )
        answers = {}
        for _ in plan:
            result, error = results.get(timeout=30)
            assert error is None, error
            answers[result.get_response().id] = (
                int(result.as_numpy("OUTPUT")[0, 0]),
                int(result.as_numpy("CORRID_OUT")[0, 0]),
            )
        assert answers == {
            "31-1": (1001, 31),
            "32-2": (1002, 32),
            "31-3": (3, 31),
            "32-4": (4, 32),
            "31-5": (10005, 31),
            "32-6": (10006, 32),
        }
        # An unknown sequence on the stream: that message's error, the stream carries on.
        client.async_stream_infer("controls", _inputs(grpcclient, 1), sequence_id=77)
        result, error = results.get(timeout=30)
        assert error is not None
        assert "sequence 77 is not active" in str(error)
    finally:
        client.stop_stream()
        client.close()


def test_implicit_state_accumulates_per_sequence(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:

        def add(sid: int, value: float, **flags: Any) -> float:
            inp = grpcclient.InferInput("INPUT", [1, 1], "FP32")
            inp.set_data_from_numpy(np.array([[value]], dtype=np.float32))
            out = client.infer("accumulator", [inp], sequence_id=sid, **flags)
            return float(out.as_numpy("OUTPUT")[0, 0])

        assert add(1, 1.0, sequence_start=True) == 1.0
        assert add(2, 10.0, sequence_start=True) == 10.0
        assert add(1, 2.0) == 3.0
        assert add(2, 20.0) == 30.0
        assert add(1, 3.0, sequence_end=True) == 6.0
        # A new sequence under an old id starts from zero again.
        assert add(1, 5.0, sequence_start=True) == 5.0
        assert add(2, 30.0, sequence_end=True) == 60.0
        assert add(1, 1.0, sequence_end=True) == 6.0
    finally:
        client.close()


def test_idle_sequence_is_ended_and_frees_its_slot(server: Server) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert _send(client, httpclient, "one_slot", 1, 1, sequence_start=True) == (1001, 1)
        # The only slot is held by sequence 1, so sequence 2 waits in the backlog
        # until sequence 1 has been idle 300 ms.
        assert _send(client, httpclient, "one_slot", 2, 2, sequence_start=True) == (1002, 2)
        with pytest.raises(InferenceServerException) as info:
            _send(client, httpclient, "one_slot", 1, 3)
        assert info.value.status() == "400"
        assert "sequence 1 is not active" in str(info.value)
        assert "max_sequence_idle_microseconds" in str(info.value)
        assert _send(client, httpclient, "one_slot", 2, 4, sequence_end=True) == (10004, 2)
    finally:
        client.close()


@pytest.mark.parametrize(
    ("parameters", "fragment"),
    [
        ({}, "needs a 'sequence_id'"),
        ({"sequence_id": 5}, "sequence 5 is not active"),
        ({"sequence_id": 5, "sequence_start": "yes"}, "must be a boolean"),
        ({"sequence_id": -1}, "unsigned 64-bit integer"),
        ({"sequence_end": True}, "needs a non-zero"),
    ],
    ids=str,
)
def test_bad_sequence_requests_are_400(
    server: Server, parameters: dict[str, Any], fragment: str
) -> None:
    body = {
        "inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "INT32", "data": [1]}],
        "parameters": parameters,
    }
    r = httpx.post(f"{server.base}/v2/models/controls/infer", json=body, timeout=10)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]


def test_sequence_parameters_to_a_stateless_model_are_400(server: Server) -> None:
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        for client, module in ((http, httpclient), (grpc, grpcclient)):
            inp = module.InferInput("INPUT0", [1, 4], "FP32")
            inp.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
            with pytest.raises(InferenceServerException) as info:
                client.infer("stateless", [inp], sequence_id=3, sequence_start=True)
            assert "has no sequence_batching" in str(info.value)
            assert info.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    finally:
        http.close()
        grpc.close()


def test_sequence_model_without_batching(tmp_path: Path) -> None:
    """max_batch_size 0: the control tensors have shape [1], one request per execution."""
    root = tmp_path / "repo"
    _save(controls_model((1,)), root / "flat" / "1" / "model.onnx")
    config = CONTROLS.replace("max_batch_size: 2", "max_batch_size: 0") % 1_000_000
    (root / "flat" / "config.pbtxt").write_text(config)
    srv = start_server(root, tmp_path / "server.log")
    try:
        client = httpclient.InferenceServerClient(srv.http_url)
        try:
            assert _send(client, httpclient, "flat", 4, 1, sequence_start=True) == (1001, 4)
            assert _send(client, httpclient, "flat", 4, 2, sequence_end=True) == (10002, 4)
        finally:
            client.close()
    finally:
        stop_server(srv)


def test_string_sequence_ids_reach_a_string_corrid(tmp_path: Path) -> None:
    """CORRID of TYPE_STRING: a UUID-like id reaches the model as text, over both transports."""
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["INPUT"], ["OUTPUT"]),
            helper.make_node("Identity", ["CORRID"], ["SEQUENCE"]),
        ],
        "strings",
        [
            helper.make_tensor_value_info("INPUT", TensorProto.INT32, ["batch", 1]),
            helper.make_tensor_value_info("CORRID", TensorProto.STRING, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("OUTPUT", TensorProto.INT32, ["batch", 1]),
            helper.make_tensor_value_info("SEQUENCE", TensorProto.STRING, ["batch", 1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    root = tmp_path / "repo"
    _save(model, root / "strings" / "1" / "model.onnx")
    (root / "strings" / "config.pbtxt").write_text(
        'max_batch_size: 2\nsequence_batching { control_input [ { name: "CORRID" '
        "control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING } ] } ] }\n"
    )
    srv = start_server(root, tmp_path / "server.log")
    http = httpclient.InferenceServerClient(srv.http_url)
    grpc = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        for client, module, sid in ((http, httpclient, "e333c95a"), (grpc, grpcclient, "abc")):
            for flags in ({"sequence_start": True}, {"sequence_end": True}):
                out = client.infer("strings", _inputs(module, 1), sequence_id=sid, **flags)
                assert out.as_numpy("SEQUENCE").reshape(-1).tolist() == [sid.encode()]
    finally:
        http.close()
        grpc.close()
        stop_server(srv)
