"""Triton ensembles served from a repository written for Triton, unchanged.

``ens``: ``pre`` (A = x + 1, B = 2x) → ``left`` (3A) and ``right`` (B - 1) in
parallel → ``combine`` (L + R). ``par``: two python models that each sleep
100 ms on the same input. The ``bad_*`` ensembles are each wrong in one way
and must be UNAVAILABLE with the reason while everything else serves.
``running``: ``accumulator`` (a sequence model keeping a running sum in its
implicit state) → ``double`` (stateless, 2x): the ensemble request's sequence
parameters reach the accumulator step.
"""

from __future__ import annotations

import queue
import textwrap
import time
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

from tests.integration.conftest import CLIENTS, Server, client_for, start_server, stop_server
from tests.integration.test_sequences import ACCUMULATOR, accumulator_model

pytestmark = pytest.mark.integration

FP32 = TensorProto.FLOAT


def _onnx(
    nodes: list[Any],
    inputs: list[str],
    outputs: list[str],
    consts: list[Any],
    kind: int = FP32,
    width: int = 4,
) -> Any:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, kind, ["batch", width]) for n in inputs],
        [helper.make_tensor_value_info(n, kind, ["batch", width]) for n in outputs],
        initializer=consts,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _const(name: str, value: float) -> Any:
    return helper.make_tensor(name, FP32, [1], [value])


MODELS = {
    "pre": _onnx(
        [
            helper.make_node("Add", ["INPUT0", "one"], ["A"]),
            helper.make_node("Mul", ["INPUT0", "two"], ["B"]),
        ],
        ["INPUT0"],
        ["A", "B"],
        [_const("one", 1.0), _const("two", 2.0)],
    ),
    "left": _onnx(
        [helper.make_node("Mul", ["IN", "three"], ["OUT"])], ["IN"], ["OUT"], [_const("three", 3.0)]
    ),
    "right": _onnx(
        [helper.make_node("Sub", ["IN", "one"], ["OUT"])], ["IN"], ["OUT"], [_const("one", 1.0)]
    ),
    "combine": _onnx([helper.make_node("Add", ["L", "R"], ["OUT"])], ["L", "R"], ["OUT"], []),
}

ENSEMBLE = """
name: "{name}"
platform: "ensemble"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [
  {{ name: "out" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "l" data_type: TYPE_FP32 dims: [ 4 ] }}
]
ensemble_scheduling {{
  step [
    {{
      model_name: "pre"
      model_version: -1
      input_map {{ key: "INPUT0" value: "x" }}
      output_map {{ key: "A" value: "a" }}
      output_map {{ key: "B" value: "b" }}
    }},
    {{
      model_name: "{left}"
      model_version: 1
      input_map {{ key: "{left_in}" value: "{left_from}" }}
      output_map {{ key: "OUT" value: "l" }}
    }},
    {{
      model_name: "right"
      model_version: -1
      input_map {{ key: "IN" value: "b" }}
      output_map {{ key: "OUT" value: "r" }}
    }},
    {{
      model_name: "combine"
      model_version: -1
      input_map {{ key: "L" value: "l" }}
      input_map {{ key: "R" value: "r" }}
      output_map {{ key: "OUT" value: "out" }}
    }}
  ]
}}
"""

GOOD = {"left": "left", "left_in": "IN", "left_from": "a"}

#: Each broken one way; the field its reason must name.
BAD = {
    "bad_cycle": ({**GOOD, "left_from": "out"}, "ensemble_scheduling.step: the steps form a cycle"),
    "bad_model": ({**GOOD, "left": "nowhere"}, "ensemble_scheduling.step[1].model_name"),
    "bad_tensor": ({**GOOD, "left_in": "NOPE"}, "ensemble_scheduling.step[1].input_map"),
    "bad_dtype": ({**GOOD, "left": "left_int"}, "ensemble_scheduling.step[1].input_map"),
    "bad_triton": ({**GOOD, "left": "triton_step"}, "TritonPythonModel"),
}

SLEEPER = """
import time

class Model:
    def predict(self, inputs):
        time.sleep(0.1)
        return {"y": inputs["x"] + OFFSET}
"""

SLEEPER_CONFIG = """
max_batch_size: 8
input: [{name: x, data_type: TYPE_FP32, dims: [4]}]
output: [{name: y, data_type: TYPE_FP32, dims: [4]}]
"""

PARALLEL = """
name: "par"
platform: "ensemble"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "p" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "q" data_type: TYPE_FP32 dims: [ 4 ] }
]
ensemble_scheduling {
  step [
    { model_name: "slow_a" model_version: -1
      input_map { key: "x" value: "x" } output_map { key: "y" value: "p" } },
    { model_name: "slow_b" model_version: -1
      input_map { key: "x" value: "x" } output_map { key: "y" value: "q" } }
  ]
}
"""

RUNNING = """
name: "running"
platform: "ensemble"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [
  { name: "total" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "doubled" data_type: TYPE_FP32 dims: [ 1 ] }
]
ensemble_scheduling {
  step [
    { model_name: "accumulator" model_version: -1
      input_map { key: "INPUT" value: "x" } output_map { key: "OUTPUT" value: "total" } },
    { model_name: "double" model_version: -1
      input_map { key: "IN" value: "total" } output_map { key: "OUT" value: "doubled" } }
  ]
}
"""

TRITON_STEP = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return []
"""


def build(root: Path) -> None:
    for name, model in MODELS.items():
        (root / name / "1").mkdir(parents=True)
        onnx.save(model, str(root / name / "1" / "model.onnx"))
    # Same tensor names as left, but INT64: an edge whose datatypes disagree.
    (root / "left_int" / "1").mkdir(parents=True)
    identity = [helper.make_node("Identity", ["IN"], ["OUT"])]
    left_int = _onnx(identity, ["IN"], ["OUT"], [], TensorProto.INT64)
    onnx.save(left_int, str(root / "left_int" / "1" / "model.onnx"))
    (root / "ens" / "1").mkdir(parents=True)  # Triton's layout: no file in it
    (root / "ens" / "config.pbtxt").write_text(ENSEMBLE.format(name="ens", **GOOD))
    for name, (values, _) in BAD.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(ENSEMBLE.format(name=name, **values))
    for name, offset in (("slow_a", 1), ("slow_b", 2)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(SLEEPER.replace("OFFSET", str(offset)))
        (root / name / "config.yaml").write_text("backend: python\n" + SLEEPER_CONFIG)
    (root / "par" / "1").mkdir(parents=True)
    (root / "par" / "config.pbtxt").write_text(PARALLEL)
    (root / "triton_step" / "1").mkdir(parents=True)
    (root / "triton_step" / "1" / "model.py").write_text(textwrap.dedent(TRITON_STEP))
    (root / "triton_step" / "config.yaml").write_text("backend: python\n" + SLEEPER_CONFIG)
    (root / "accumulator" / "1").mkdir(parents=True)
    onnx.save(accumulator_model(), str(root / "accumulator" / "1" / "model.onnx"))
    (root / "accumulator" / "config.pbtxt").write_text(ACCUMULATOR)
    (root / "double" / "1").mkdir(parents=True)
    two = [helper.make_node("Mul", ["IN", "two"], ["OUT"])]
    double = _onnx(two, ["IN"], ["OUT"], [_const("two", 2.0)], width=1)
    onnx.save(double, str(root / "double" / "1" / "model.onnx"))
    (root / "running" / "1").mkdir(parents=True)
    (root / "running" / "config.pbtxt").write_text(RUNNING)
    (root / "running_cached" / "1").mkdir(parents=True)
    cached = RUNNING.replace('"running"', '"running_cached"') + "response_cache { enable: true }\n"
    (root / "running_cached" / "config.pbtxt").write_text(cached)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("ensemble_repo")
    build(root)
    srv = start_server(
        root, tmp_path_factory.mktemp("ensemble_log") / "server.log", "--strict-readiness", "false"
    )
    yield srv
    stop_server(srv)


def index(server: Server) -> dict[str, dict[str, Any]]:
    entries = httpx.post(f"{server.base}/v2/repository/index", json={}, timeout=10).json()
    return {e["name"]: e for e in entries}


def successes(server: Server, model: str) -> int:
    """Requests the model answered (steps included), from its statistics."""
    r = httpx.get(f"{server.base}/v2/models/{model}/stats", timeout=10)
    assert r.status_code == 200, r.text
    return sum(int(s["inference_stats"]["success"]["count"]) for s in r.json()["model_stats"])


X = np.array([[1, 2, 3, 4], [0, -1, 5, 10]], dtype=np.float32)


def expected() -> dict[str, np.ndarray]:
    a, b = X + 1, X * 2
    left, right = 3 * a, b - 1
    return {"l": left, "out": left + right}


def infer(client: Any, module: Any, model: str, outputs: list[str] | None = None) -> Any:
    tensor = module.InferInput("x", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    wanted = [module.InferRequestedOutput(n) for n in outputs] if outputs else None
    return client.infer(model, [tensor], outputs=wanted)


@pytest.mark.parametrize("kind", CLIENTS)
def test_ensemble_serves_its_steps_outputs(kind: str, http: Any, grpc: Any) -> None:
    client, module = client_for(kind, http, grpc)
    result = infer(client, module, "ens")
    for name, want in expected().items():
        np.testing.assert_array_equal(result.as_numpy(name), want)


def test_metadata_and_config_show_the_ensemble(http: Any, grpc: Any) -> None:
    meta = http.get_model_metadata("ens")
    assert meta["platform"] == "ensemble"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["out", "l"]
    config = http.get_model_config("ens")
    assert config["platform"] == "ensemble"
    steps = config["ensemble_scheduling"]["step"]
    assert [s["model_name"] for s in steps] == ["pre", "left", "right", "combine"]
    assert steps[3]["input_map"] == {"L": "l", "R": "r"}
    gconfig = grpc.get_model_config("ens", as_json=True)["config"]
    assert gconfig["platform"] == "ensemble"
    assert [s["model_name"] for s in gconfig["ensemble_scheduling"]["step"]] == [
        "pre",
        "left",
        "right",
        "combine",
    ]
    assert grpc.get_model_metadata("ens", as_json=True)["platform"] == "ensemble"


def test_a_request_for_one_output_runs_only_the_steps_it_needs(server: Server, http: Any) -> None:
    before = {m: successes(server, m) for m in ("ens", "pre", "left", "right", "combine")}
    result = infer(http, httpclient, "ens", ["l"])
    np.testing.assert_array_equal(result.as_numpy("l"), expected()["l"])
    assert result.as_numpy("out") is None
    after = {m: successes(server, m) for m in before}
    assert {m: after[m] - before[m] for m in before} == {
        "ens": 1,
        "pre": 1,
        "left": 1,
        "right": 0,
        "combine": 0,
    }


def test_parallel_branches_overlap(grpc: Any) -> None:
    infer(grpc, grpcclient, "par")  # first use: nothing left to set up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        result = infer(grpc, grpcclient, "par")
        times.append(time.perf_counter() - start)
        np.testing.assert_array_equal(result.as_numpy("p"), X + 1)
        np.testing.assert_array_equal(result.as_numpy("q"), X + 2)
    # Two 100 ms steps one after the other take 200 ms or more.
    assert min(times) < 0.17, times


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_broken_ensemble_is_unavailable_with_the_reason(
    server: Server, http: Any, name: str
) -> None:
    entry = index(server)[name]
    assert entry["state"] == "UNAVAILABLE"
    assert f"{name}/config.pbtxt" in entry["reason"]
    assert BAD[name][1] in entry["reason"]
    assert not http.is_model_ready(name)
    assert http.is_model_ready("ens")  # the rest serves


def test_reasons_say_what_is_wrong(server: Server) -> None:
    entries = index(server)
    assert "unknown model 'nowhere'" in entries["bad_model"]["reason"]
    assert "'NOPE' is not an input of model 'left'" in entries["bad_tensor"]["reason"]
    assert "is FP32 but model 'left_int' input 'IN' takes INT64" in entries["bad_dtype"]["reason"]
    assert "model 'triton_step' cannot serve" in entries["bad_triton"]["reason"]
    assert "define a class Model" in entries["bad_triton"]["reason"]  # the porting hint


def test_an_ensemble_follows_its_step_models_ready_state(server: Server, http: Any) -> None:
    assert http.is_model_ready("par")
    http.unload_model("slow_b")
    try:
        entry = index(server)["par"]
        assert entry["state"] == "UNAVAILABLE"
        assert "model 'slow_b' cannot serve" in entry["reason"]
    finally:
        http.load_model("slow_b")
    assert index(server)["par"]["state"] == "READY"


#: The statistics an ensemble's are summed from (Triton's inference_stats durations).
DURATIONS = ("queue", "compute_input", "compute_infer", "compute_output")


def statistics(kind: str, client: Any, model: str) -> dict[str, int]:
    """One model's counts and durations as tritonclient reads them (gRPC's JSON leaves
    zeros out and writes 64-bit numbers as strings)."""
    if kind == "http":
        raw = client.get_inference_statistics(model)
    else:
        raw = client.get_inference_statistics(model, as_json=True)
    (entry,) = raw["model_stats"]
    stats = entry.get("inference_stats", {})
    out = {
        "success": int(stats.get("success", {}).get("count", 0)),
        "inference_count": int(entry.get("inference_count", 0)),
        "execution_count": int(entry.get("execution_count", 0)),
    }
    for name in DURATIONS:
        out[name] = int(stats.get(name, {}).get("ns", 0))
    # Executions of X's two rows: how many, and their compute_infer.
    batch = next((b for b in entry.get("batch_stats", []) if int(b["batch_size"]) == 2), {})
    infer = batch.get("compute_infer", {})
    out["batch_2"], out["batch_2_infer"] = int(infer.get("count", 0)), int(infer.get("ns", 0))
    return out


def moved(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in before}


@pytest.mark.parametrize("kind", CLIENTS)
def test_ensemble_statistics_sum_its_steps(kind: str, http: Any, grpc: Any) -> None:
    client, module = client_for(kind, http, grpc)
    models = ("ens", "pre", "left", "right", "combine")
    before = {m: statistics(kind, client, m) for m in models}
    infer(client, module, "ens")
    after = {m: statistics(kind, client, m) for m in models}
    delta = {m: moved(before[m], after[m]) for m in models}
    rows = X.shape[0]
    for m in models:
        # One request each, of two rows: the ensemble's, and the one it sent each step.
        assert (delta[m]["success"], delta[m]["inference_count"]) == (1, rows), (m, delta[m])
    steps = models[1:]
    for name in ("queue", "compute_infer", "compute_output"):
        assert delta["ens"][name] == sum(delta[m][name] for m in steps), (name, delta)
    assert delta["ens"]["compute_infer"] > 0
    # Its own routing and validation come before its steps', in compute_input too.
    assert delta["ens"]["compute_input"] >= sum(delta[m]["compute_input"] for m in steps)
    # As Triton reports an ensemble: one execution per ensemble request, in batch_stats
    # under the request's batch size (its rows), with its steps' compute summed.
    assert (delta["ens"]["execution_count"], delta["ens"]["batch_2"]) == (1, 1)
    assert delta["ens"]["batch_2_infer"] == delta["ens"]["compute_infer"]
    for m in steps:
        # Each step ran its one request alone: one execution of two rows.
        assert (delta[m]["execution_count"], delta[m]["batch_2"]) == (1, 1), (m, delta[m])


def test_parallel_steps_compute_times_add_up(http: Any) -> None:
    models = ("par", "slow_a", "slow_b")
    before = {m: statistics("http", http, m) for m in models}
    infer(http, httpclient, "par")
    after = {m: statistics("http", http, m) for m in models}
    delta = {m: moved(before[m], after[m]) for m in models}
    computed = delta["slow_a"]["compute_infer"] + delta["slow_b"]["compute_infer"]
    assert delta["par"]["compute_infer"] == computed
    # Each step slept 100 ms, the two at the same time (test_parallel_branches_overlap):
    # the ensemble's compute is their sum, not the ~100 ms it took.
    assert computed >= 200_000_000, computed


def _running(client: Any, module: Any, sid: int, value: float, **flags: Any) -> tuple[float, float]:
    """One request of sequence ``sid`` through ``running``: (total, doubled)."""
    tensor = module.InferInput("x", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.float32))
    result = client.infer("running", [tensor], sequence_id=sid, **flags)
    return float(result.as_numpy("total")[0, 0]), float(result.as_numpy("doubled")[0, 0])


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_sequence_step_keeps_each_sequence_state(kind: str, http: Any, grpc: Any) -> None:
    client, module = client_for(kind, http, grpc)
    a, b = (11, 12) if kind == "http" else (21, 22)
    assert _running(client, module, a, 1.0, sequence_start=True) == (1.0, 2.0)
    assert _running(client, module, b, 10.0, sequence_start=True) == (10.0, 20.0)
    assert _running(client, module, a, 2.0) == (3.0, 6.0)
    assert _running(client, module, b, 20.0) == (30.0, 60.0)
    assert _running(client, module, a, 3.0, sequence_end=True) == (6.0, 12.0)
    assert _running(client, module, b, 30.0, sequence_end=True) == (60.0, 120.0)
    # Ended: the accumulator's own check refuses the next request, through the ensemble.
    with pytest.raises(InferenceServerException) as info:
        _running(client, module, a, 1.0)
    assert info.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    assert f"sequence {a} is not active" in str(info.value)


def _raw(server: Server, parameters: dict[str, Any], value: float) -> httpx.Response:
    body = {
        "inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [value]}],
        "parameters": parameters,
    }
    return httpx.post(f"{server.base}/v2/models/running/infer", json=body, timeout=10)


def test_a_sequence_step_over_raw_http(server: Server) -> None:
    def total(r: httpx.Response) -> float:
        assert r.status_code == 200, r.text
        (out,) = [o for o in r.json()["outputs"] if o["name"] == "total"]
        return float(out["data"][0])

    assert total(_raw(server, {"sequence_id": 31, "sequence_start": True}, 5.0)) == 5.0
    assert total(_raw(server, {"sequence_id": 32, "sequence_start": True}, 7.0)) == 7.0
    assert total(_raw(server, {"sequence_id": 31, "sequence_end": True}, 1.0)) == 6.0
    assert total(_raw(server, {"sequence_id": 32, "sequence_end": True}, 1.0)) == 8.0


def test_a_sequence_step_needs_a_sequence_id(server: Server, http: Any) -> None:
    before = successes(server, "accumulator")
    r = _raw(server, {}, 1.0)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "model 'running': step 0 ('accumulator') is a sequence model" in error
    assert "'sequence_id'" in error
    tensor = httpclient.InferInput("x", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.array([[1.0]], dtype=np.float32))
    with pytest.raises(InferenceServerException) as info:
        http.infer("running", [tensor])
    assert info.value.status() == "400"
    assert "step 0 ('accumulator') is a sequence model" in str(info.value)
    assert successes(server, "accumulator") == before


def test_an_ensemble_with_a_sequence_step_is_not_cached(server: Server) -> None:
    entry = index(server)["running_cached"]
    assert entry["state"] == "UNAVAILABLE"
    assert "running_cached/config.pbtxt" in entry["reason"]
    assert "response_cache.enable" in entry["reason"]
    assert "sequence model 'accumulator'" in entry["reason"]


def test_a_sequence_step_over_a_grpc_stream(server: Server) -> None:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        plan = [
            (41, 1, True, False),
            (42, 5, True, False),
            (41, 2, False, True),
            (42, 6, False, True),
        ]
        for sid, value, start, end in plan:
            tensor = grpcclient.InferInput("x", [1, 1], "FP32")
            tensor.set_data_from_numpy(np.array([[value]], dtype=np.float32))
            client.async_stream_infer(
                "running",
                [tensor],
                request_id=f"{sid}-{value}",
                sequence_id=sid,
                sequence_start=start,
                sequence_end=end,
            )
        answers = {}
        for _ in plan:
            result, error = results.get(timeout=30)
            assert error is None, error
            answers[result.get_response().id] = float(result.as_numpy("total")[0, 0])
        assert answers == {"41-1": 1.0, "42-5": 5.0, "41-2": 3.0, "42-6": 11.0}
    finally:
        client.stop_stream()
        client.close()
