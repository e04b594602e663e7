"""Cascades and ensemble early exit, served from a repository of small ONNX models.

``small`` answers its input as it is, so a row's confidence is what the test
sends (``[0.95, 0.05]`` is sure, ``[0.6, 0.4]`` is not); ``large`` adds 10,
so every answer shows which model gave it. Calls are counted through the
models' own statistics and the per-stage metric.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper

from tests.integration.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.integration


def _model(nodes: list[Any], consts: list[Any], kind: int = TensorProto.FLOAT) -> Any:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", kind, ["batch", 2])],
        [helper.make_tensor_value_info("probabilities", kind, ["batch", 2])],
        initializer=consts,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


SMALL = _model([helper.make_node("Identity", ["x"], ["probabilities"])], [])
LARGE = _model(
    [helper.make_node("Add", ["x", "ten"], ["probabilities"])],
    [helper.make_tensor("ten", TensorProto.FLOAT, [1], [10.0])],
)
LARGE_INT = _model([helper.make_node("Identity", ["x"], ["probabilities"])], [], TensorProto.INT64)

TENSORS = """max_batch_size: 8
input: [{name: x, data_type: TYPE_FP32, dims: [2]}]
output: [{name: probabilities, data_type: TYPE_FP32, dims: [2]}]
"""

CASCADE = (
    TENSORS
    + """modelport:
  cascade:
    per_row: PER_ROW
    stages:
      - {model: small, accept: {output: probabilities, max_at_least: 0.9}}
      - {model: LARGE}
"""
)

EARLY = """platform: ensemble
max_batch_size: 8
input: [{name: x, data_type: TYPE_FP32, dims: [2]}]
output:
  - {name: s, data_type: TYPE_FP32, dims: [2]}
  - {name: big, data_type: TYPE_FP32, dims: [2]}
ensemble_scheduling:
  step:
    - {model_name: small, input_map: {x: x}, output_map: {probabilities: s}}
    - {model_name: large, input_map: {x: x}, output_map: {probabilities: big}}
modelport:
  steps:
    large: {when: {output: WHEN, max_at_most: 0.9}}
"""

#: An ensemble whose one step is the cascade ``casc``.
WRAPPED = """platform: ensemble
max_batch_size: 8
input: [{name: x, data_type: TYPE_FP32, dims: [2]}]
output: [{name: p, data_type: TYPE_FP32, dims: [2]}]
ensemble_scheduling:
  step:
    - {model_name: casc, input_map: {x: x}, output_map: {probabilities: p}}
"""

SURE, UNSURE = [0.95, 0.05], [0.6, 0.4]


def build(root: Path) -> None:
    for name, model in (("small", SMALL), ("large", LARGE), ("large_int", LARGE_INT)):
        (root / name / "1").mkdir(parents=True)
        onnx.save(model, str(root / name / "1" / "model.onnx"))

    def cascade(per_row: str, large: str) -> str:
        return CASCADE.replace("PER_ROW", per_row).replace("LARGE", large)

    composites = {
        "casc": cascade("false", "large"),
        "casc_rows": cascade("true", "large"),
        "bad_cascade": cascade("false", "large_int"),
        "early": EARLY.replace("WHEN", "s"),
        "bad_when": EARLY.replace("WHEN", "nowhere"),
        "wrapped": WRAPPED,
    }
    for name, config in composites.items():
        (root / name / "1").mkdir(parents=True)  # no model file: its stages compute
        (root / name / "config.yaml").write_text(config)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("cascade_repo")
    build(root)
    log = tmp_path_factory.mktemp("cascade_log") / "server.log"
    srv = start_server(root, log, "--strict-readiness", "false")
    yield srv
    stop_server(srv)


def infer(server: Server, model: str, rows: list[list[float]], **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [len(rows), 2], "data": rows}]
    }
    if params:
        body["parameters"] = params
    r = httpx.post(f"{server.base}/v2/models/{model}/infer", json=body, timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def calls(server: Server, model: str) -> tuple[int, int]:
    """(requests, rows) the model computed, from its statistics."""
    r = httpx.get(f"{server.base}/v2/models/{model}/stats", timeout=10)
    assert r.status_code == 200, r.text
    stats = r.json()["model_stats"]
    requests = sum(int(s["inference_stats"]["success"]["count"]) for s in stats)
    return requests, sum(int(s["inference_count"]) for s in stats)


def answers(server: Server, model: str, stage: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
    prefix = f'modelport_cascade_answers_total{{model="{model}",stage="{stage}"}} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


def output(response: dict[str, Any], name: str) -> list[float]:
    found = [o for o in response["outputs"] if o["name"] == name]
    assert found, response
    return [float(v) for v in found[0]["data"]]


def test_a_sure_request_is_answered_by_the_small_model_alone(server: Server) -> None:
    large, small_answers = calls(server, "large"), answers(server, "casc", "small")
    response = infer(server, "casc", [SURE, SURE])
    assert response["parameters"]["cascade_stage"] == "small"
    assert output(response, "probabilities") == pytest.approx(SURE + SURE)
    assert calls(server, "large") == large
    assert answers(server, "casc", "small") == small_answers + 1


def test_an_unsure_request_goes_to_the_large_model(server: Server) -> None:
    (requests, rows), before = calls(server, "large"), answers(server, "casc", "large")
    response = infer(server, "casc", [SURE, UNSURE])
    assert response["parameters"]["cascade_stage"] == "large"
    assert output(response, "probabilities") == pytest.approx([10.95, 10.05, 10.6, 10.4])
    assert calls(server, "large") == (requests + 1, rows + 2)
    assert answers(server, "casc", "large") == before + 1


def test_per_row_the_large_model_sees_exactly_the_unsure_rows_in_order(server: Server) -> None:
    requests, rows = calls(server, "large")
    response = infer(server, "casc_rows", [UNSURE, SURE, UNSURE, SURE])
    assert response["parameters"]["cascade_stage"] == "large,small,large,small"
    assert output(response, "probabilities") == pytest.approx(
        [10.6, 10.4, 0.95, 0.05, 10.6, 10.4, 0.95, 0.05]
    )
    assert calls(server, "large") == (requests + 1, rows + 2)
    assert answers(server, "casc_rows", "large") >= 2


def test_a_caller_can_force_the_last_stage(server: Server) -> None:
    requests, _ = calls(server, "large")
    response = infer(server, "casc", [SURE], cascade_force_last=True)
    assert response["parameters"]["cascade_stage"] == "large"
    assert calls(server, "large")[0] == requests + 1


def test_an_ensemble_exits_early_without_calling_its_downstream_step(server: Server) -> None:
    large = calls(server, "large")
    response = infer(server, "early", [SURE])
    assert [o["name"] for o in response["outputs"]] == ["s"]
    assert response["parameters"]["ensemble_skipped"] == "large"
    assert calls(server, "large") == large
    unsure = infer(server, "early", [UNSURE])
    assert output(unsure, "big") == pytest.approx([10.6, 10.4])
    assert calls(server, "large")[0] == large[0] + 1


def test_bad_composites_are_unavailable_naming_file_and_field(server: Server) -> None:
    entries = httpx.post(f"{server.base}/v2/repository/index", json={}, timeout=10).json()
    by_name = {e["name"]: e for e in entries}
    for name, field in (
        ("bad_cascade", "modelport.cascade.stages[1].model"),
        ("bad_when", "modelport.steps.large.when.output"),
    ):
        entry = by_name[name]
        assert entry["state"] == "UNAVAILABLE", entry
        assert "config.yaml" in entry["reason"] and field in entry["reason"], entry
    assert by_name["bad_cascade"]["reason"].count("INT64") == 1
    assert by_name["casc"]["state"] == "READY"
    infer(server, "casc", [SURE])  # the others serve


def test_grpc_callers_see_the_stage_too(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = grpcclient.InferInput("x", [1, 2], "FP32")
    x.set_data_from_numpy(np.array([UNSURE], dtype=np.float32))
    result = client.infer("casc", [x])
    parameters = result.get_response().parameters
    assert parameters["cascade_stage"].string_param == "large"
    np.testing.assert_allclose(result.as_numpy("probabilities"), [[10.6, 10.4]], rtol=1e-6)


def test_a_cascade_serves_as_an_ensemble_step(server: Server) -> None:
    requests, _ = calls(server, "large")
    sure = infer(server, "wrapped", [SURE])
    assert output(sure, "p") == pytest.approx(SURE)
    assert calls(server, "large")[0] == requests
    unsure = infer(server, "wrapped", [UNSURE])
    assert output(unsure, "p") == pytest.approx([10.6, 10.4])
    assert calls(server, "large")[0] == requests + 1
