"""Payload logging on the real server: sampled records on disk, personal data redacted.

One server serves the bundled example twice: ``logged`` with payload logging
on (every request sampled) and ``quiet`` without it. Requests carry an e-mail
address, a card number and an Emirates ID in their id and parameters, over
both transports; the server is then stopped, which writes what it queued,
and the day files are read.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from modelport.examples import repository_path, samples_path
from tests.integration.conftest import start_server, stop_server

pytestmark = pytest.mark.integration

EXAMPLE = "breast_cancer"
PAYLOAD_LOG = """
modelport:
  payload_log:
    enabled: true
    sample: 1.0
    redact_fields: [customer_name]
    retention_days: 7
"""
EMAIL = "jane.doe@example.ae"
CARD = "4111 1111 1111 1111"
EMIRATES_ID = "784-1990-1234567-1"
RAW = (EMAIL, CARD, "4111111111111111", EMIRATES_ID, "784199012345671", "Jane Doe")


def _body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((samples_path() / f"{EXAMPLE}.json").read_text())
    body.update(extra)
    return body


@pytest.fixture(scope="module")
def payloads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The payload directory after a server answered the requests below and stopped."""
    repo = tmp_path_factory.mktemp("repo")
    for name in ("logged", "quiet"):
        shutil.copytree(repository_path() / EXAMPLE, repo / name)
    config = repo / "logged" / "config.yaml"
    config.write_text(config.read_text() + PAYLOAD_LOG)
    work = tmp_path_factory.mktemp("payload-server")
    directory = work / "payloads"
    settings = work / "server.yaml"
    settings.write_text(f"payload_log_dir: {json.dumps(str(directory))}\n")
    server = start_server(repo, work / "server.log", "--config", str(settings))
    try:
        with httpx.Client(base_url=server.base) as client:
            for name in ("logged", "quiet"):
                answer = client.post(
                    f"/v2/models/{name}/infer",
                    json=_body(
                        id=f"order of {EMAIL}",
                        parameters={
                            "customer_name": "Jane Doe",
                            "card": CARD,
                            "eid": EMIRATES_ID,
                        },
                    ),
                )
                assert answer.status_code == 200, answer.text
            # A request the model refuses is logged with its error.
            bad = _body(id="bad shape")
            bad["inputs"][0]["shape"] = [1, 29]
            bad["inputs"][0]["data"] = bad["inputs"][0]["data"][:29]
            assert client.post("/v2/models/logged/infer", json=bad).status_code == 400
        row = np.array([_body()["inputs"][0]["data"]], dtype=np.float32)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            tensor = grpcclient.InferInput("input", list(row.shape), "FP32")
            tensor.set_data_from_numpy(row)
            grpc.infer("logged", [tensor], request_id='784199012345671\n{"id":"forged"}')
        finally:
            grpc.close()
    finally:
        code = stop_server(server)
    assert code == 0, server.log()
    yield directory


def _day_file(directory: Path, model: str) -> Path:
    files = sorted((directory / model).glob("*.jsonl"))
    assert len(files) == 1, files
    return files[0]


def test_records_are_written_to_todays_file_of_the_model(payloads: Path) -> None:
    file = _day_file(payloads, "logged")
    today = dt.datetime.now(dt.UTC).date()
    assert dt.date.fromisoformat(file.stem) in (today, today - dt.timedelta(days=1))
    records = [json.loads(line) for line in file.read_text().splitlines()]
    assert len(records) == 3
    by_protocol = {r["protocol"]: r for r in records if "error" not in r}
    assert set(by_protocol) == {"http", "grpc"}
    ok = by_protocol["http"]
    assert ok["model"] == "logged" and ok["version"] == "1"
    assert ok["inputs"][0]["name"] == "input" and ok["inputs"][0]["shape"] == [1, 30]
    assert {o["name"] for o in ok["outputs"]} == {"label", "probabilities"}
    [failed] = [r for r in records if "error" in r]
    assert failed["id"] == "bad shape" and "outputs" not in failed


def test_personal_data_is_replaced_by_placeholders(payloads: Path) -> None:
    text = _day_file(payloads, "logged").read_text()
    for raw in RAW:
        assert raw not in text
    records = {r["protocol"]: r for r in map(json.loads, text.splitlines()) if "error" not in r}
    http = records["http"]
    assert http["id"] == "order of [EMAIL]"
    assert http["parameters"] == {
        "customer_name": "[REDACTED]",
        "card": "[CARD]",
        "eid": "[EMIRATES_ID]",
    }


def test_a_newline_in_a_request_id_does_not_forge_a_record(payloads: Path) -> None:
    lines = _day_file(payloads, "logged").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert all(r.get("id") != "forged" for r in records)
    [grpc] = [r for r in records if r["protocol"] == "grpc"]
    assert grpc["id"] == '[EMIRATES_ID]\n{"id":"forged"}'


def test_a_model_without_payload_logging_writes_nothing(payloads: Path) -> None:
    assert not (payloads / "quiet").exists()
    assert sorted(p.name for p in payloads.iterdir()) == ["logged"]
