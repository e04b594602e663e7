"""Data residency, the compliance report and input profiles on real servers.

Two nodes serve one repository: ``ae-dxb-1`` and ``eu-west-1``. ``open`` has
no residency, ``local`` may only be processed in ``ae``; ``profiled`` ships a
reference profile and ``badprofile`` a broken one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from modelport.examples import repository_path, samples_path
from tests.integration.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.integration

EXAMPLE = "breast_cancer"


def _sample() -> list[float]:
    body = json.loads((samples_path() / f"{EXAMPLE}.json").read_text())
    data: list[float] = body["inputs"][0]["data"]
    return data


def _body(row: list[float]) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}]}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    for name in ("open", "local", "profiled", "badprofile"):
        shutil.copytree(repository_path() / EXAMPLE, repo / name)
    config = repo / "local" / "config.yaml"
    config.write_text(config.read_text() + "modelport:\n  residency: [ae]\n")
    sample = np.asarray(_sample())
    profile = {
        "format": 1,
        "quantiles": [0.001, 0.999],
        "inputs": {
            "input": {
                "rows": 100,
                "features": 30,
                "low": (sample * 0.5).tolist(),
                "high": (sample * 1.5).tolist(),
            }
        },
    }
    (repo / "profiled" / "1" / "reference_profile.json").write_text(json.dumps(profile))
    (repo / "badprofile" / "1" / "reference_profile.json").write_text("{not json")
    return repo


@pytest.fixture(scope="module")
def nodes(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    work = tmp_path_factory.mktemp("nodes")
    ae = start_server(repo, work / "ae.log", "--region", "ae-dxb-1")
    try:
        eu = start_server(repo, work / "eu.log", "--region", "eu-west-1")
    except BaseException:
        stop_server(ae)
        raise
    yield {"ae": ae, "eu": eu}
    stop_server(ae)
    stop_server(eu)


def _infer(server: Server, model: str, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{server.base}/v2/models/{model}/infer", json=_body(_sample()), headers=headers
    )


def test_data_bound_to_ae_is_refused_on_the_eu_node(nodes: dict[str, Server]) -> None:
    reply = _infer(nodes["eu"], "open", **{"X-Data-Residency": "ae"})
    assert reply.status_code == 451
    error = reply.json()["error"]
    assert "data residency [ae]" in error and "'eu-west-1'" in error


def test_the_same_data_is_served_on_the_ae_node(nodes: dict[str, Server]) -> None:
    assert _infer(nodes["ae"], "open", **{"X-Data-Residency": "ae"}).status_code == 200
    assert _infer(nodes["ae"], "local", **{"X-Data-Residency": "ae"}).status_code == 200
    assert _infer(nodes["eu"], "open").status_code == 200  # nothing declared
    assert _infer(nodes["eu"], "open", **{"X-Data-Residency": "ae,eu"}).status_code == 200


def test_a_malformed_residency_header_is_a_bad_request(nodes: dict[str, Server]) -> None:
    reply = _infer(nodes["ae"], "open", **{"X-Data-Residency": "a e"})
    assert reply.status_code == 400
    assert "X-Data-Residency header" in reply.json()["error"]


def test_grpc_refuses_with_failed_precondition(nodes: dict[str, Server]) -> None:
    row = np.asarray([_sample()], np.float32)
    for node, refused in (("eu", True), ("ae", False)):
        client = grpcclient.InferenceServerClient(nodes[node].grpc_url)
        tensor = grpcclient.InferInput("input", [1, 30], "FP32")
        tensor.set_data_from_numpy(row)
        try:
            if refused:
                with pytest.raises(InferenceServerException) as exc:
                    client.infer("open", [tensor], headers={"x-data-residency": "ae"})
                assert exc.value.status() == "StatusCode.FAILED_PRECONDITION"
                assert "eu-west-1" in exc.value.message()
            else:
                result = client.infer("open", [tensor], headers={"x-data-residency": "ae"})
                assert result.as_numpy("label") is not None
        finally:
            client.close()


def test_refusals_are_audited(nodes: dict[str, Server]) -> None:
    server = nodes["eu"]
    assert _infer(server, "open", **{"X-Data-Residency": "ae"}).status_code == 451
    deadline = time.monotonic() + 30
    refused: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not refused:
        history = httpx.get(f"{server.base}/api/v1/history?limit=1000").json()
        refused = [e for e in history["events"] if e["action"] == "residency.refused"]
        if not refused:
            time.sleep(0.1)  # the audit writer runs in the background
    assert refused, "no residency.refused record"
    assert refused[0]["model"] == "open"


def test_a_model_restricted_to_ae_is_unavailable_on_the_eu_node(
    nodes: dict[str, Server],
) -> None:
    index = httpx.post(f"{nodes['eu'].base}/v2/repository/index", json={}).json()
    local = [e for e in index if e["name"] == "local"]
    assert local and local[0]["state"] == "UNAVAILABLE"
    assert "residency is [ae]" in local[0]["reason"]
    assert "'eu-west-1'" in local[0]["reason"]
    assert _infer(nodes["eu"], "local").status_code == 503
    ae_index = httpx.post(f"{nodes['ae'].base}/v2/repository/index", json={}).json()
    assert {"name": "local", "version": "1", "state": "READY"}.items() <= next(
        e for e in ae_index if e["name"] == "local"
    ).items()


def test_a_broken_profile_makes_its_version_unavailable(nodes: dict[str, Server]) -> None:
    index = httpx.post(f"{nodes['ae'].base}/v2/repository/index", json={}).json()
    (entry,) = [e for e in index if e["name"] == "badprofile"]
    assert entry["state"] == "UNAVAILABLE"
    assert "reference_profile.json" in entry["reason"] and "invalid JSON" in entry["reason"]


def _out_of_profile(server: Server) -> list[str]:
    text = httpx.get(f"{server.base}/metrics").text
    return [
        line
        for line in text.splitlines()
        if line.startswith("modelport_input_out_of_profile_total{")
    ]


def test_out_of_profile_inputs_are_counted_per_feature(nodes: dict[str, Server]) -> None:
    server = nodes["ae"]
    inside = httpx.post(f"{server.base}/v2/models/profiled/infer", json=_body(_sample()))
    assert inside.status_code == 200
    assert _out_of_profile(server) == []
    row = _sample()
    row[3] = 1e6
    outside = httpx.post(f"{server.base}/v2/models/profiled/infer", json=_body(row))
    assert outside.status_code == 200
    assert _out_of_profile(server) == [
        'modelport_input_out_of_profile_total{feature="3",input="input",model="profiled",'
        'version="1"} 1.0'
    ]


def test_compliance_report(repo: Path, tmp_path: Path) -> None:
    settings = tmp_path / "server.yaml"
    settings.write_text("tenant_residency: {acme: ae}\npayload_log_dir: /var/log/mp\n")
    done = subprocess.run(
        [sys.executable, "-m", "modelport", "compliance", "report", "--repository", str(repo),
         "--config", str(settings), "--region", "eu-west-1", "--json"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["node"] == {
        "region": "eu-west-1",
        "jurisdiction": "eu",
        "repository": str(repo),
        "tenant_residency": {"acme": ["ae"]},
    }
    models = {m["name"]: m for m in report["models"]}
    assert sorted(models) == ["badprofile", "local", "open", "profiled"]
    local = models["local"]
    assert local["allowed_regions"] == ["ae"]
    assert local["served_here"] is False and "residency is [ae]" in local["reason"]
    assert local["encrypted"] is False
    assert local["payload_log"] == {"enabled": False}
    assert local["rate_limit"] is None
    assert models["open"]["allowed_regions"] == ["anywhere"]
    assert models["open"]["served_here"] is True
    assert models["profiled"]["versions"] == [
        {"version": "1", "sealed": False, "reference_profile": True}
    ]
    table = subprocess.run(
        [sys.executable, "-m", "modelport", "compliance", "report", "--repository", str(repo),
         "--region", "eu-west-1"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "local" in table.stdout and "eu-west-1" in table.stdout


def test_compliance_table_keeps_bracketed_text_one_row_per_line(repo: Path) -> None:
    # Piped, as here: no terminal width to wrap to, so each row stays whole,
    # and "[ae]" is text, not a markup tag to drop.
    table = subprocess.run(
        [sys.executable, "-m", "modelport", "compliance", "report", "--repository", str(repo),
         "--region", "eu-west-1"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    local = [line for line in table.stdout.splitlines() if "│ local " in line]
    assert len(local) == 1
    assert "the model's residency is [ae]; this node's region 'eu-west-1' is not in it" in local[0]


def test_compliance_report_requires_a_repository(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MODELPORT_REPOSITORY"}
    done = subprocess.run(
        [sys.executable, "-m", "modelport", "compliance", "report", "--json"],
        capture_output=True, text=True, check=False, timeout=120, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    assert "no model repository given: pass REPO (or --repository REPO)" in done.stderr


def test_compliance_report_takes_the_repository_as_an_argument_and_lists_misnamed_dirs(
    tmp_path: Path,
) -> None:
    """``report REPO`` as ``serve REPO``; a directory not served for its name gets a row."""
    repo = tmp_path / "repo3"
    shutil.copytree(repository_path() / EXAMPLE, repo / "open")
    (repo / "r[red]x").mkdir()
    (repo / "esc\x1b[31m").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "modelport", "compliance", "report", str(repo),
         "--region", "eu-west-1", "--json"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    models = {m["name"]: m for m in json.loads(done.stdout)["models"]}
    assert sorted(models) == ["esc\\x1b[31m", "open", "r[red]x"]
    for name in ("r[red]x", "esc\\x1b[31m"):
        assert models[name]["served_here"] is False
        assert "is not a valid model name" in models[name]["reason"]
    assert models["open"]["served_here"] is True
    table = subprocess.run(
        [sys.executable, "-m", "modelport", "compliance", "report", str(repo),
         "--region", "eu-west-1"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "\x1b" not in table.stdout
    row = [line for line in table.stdout.splitlines() if "│ r[red]x " in line]
    assert len(row) == 1 and "no (directory 'r[red]x' is not a valid model name" in row[0]
