"""Payload logging: sampling, record format, limits, injection, retention and sealing."""

from __future__ import annotations

import asyncio
import base64
import calendar
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from modelport.cli.payloads import payloads_app
from modelport.config.model import ModelConfig, PayloadLog, parse_model_config
from modelport.config.server import load_server_config
from modelport.controlplane.crypto.keys import LocalKeyProvider
from modelport.errors import ConfigError, InvalidRequest
from modelport.observability.metrics import Metrics
from modelport.observability.payload_files import read_records
from modelport.observability.payloads import PayloadLogger, enabled_settings
from modelport.regions import region_allowed
from modelport.types import InferenceRequest, InferenceResponse, Tensor

# The command as ``modelport payloads`` mounts it.
app = typer.Typer()
app.add_typer(payloads_app, name="payloads")

# 2024-05-10 12:00:00 UTC
NOON = float(calendar.timegm((2024, 5, 10, 12, 0, 0)))
DAY = 86400.0


@dataclass
class FakeModel:
    name: str
    version: str
    config: ModelConfig


def model(name: str = "fraud", **payload_log: Any) -> FakeModel:
    options: dict[str, Any] = {"payload_log": {"enabled": True, "sample": 1.0, **payload_log}}
    residency = options["payload_log"].pop("residency", None)
    if residency is not None:
        options["residency"] = residency
    return FakeModel(name, "1", parse_model_config({"modelport": options}, "test"))


def settings(m: FakeModel) -> PayloadLog:
    found = enabled_settings(m.config)
    assert found is not None
    return found


def request(id: str | None = "req-1", **parameters: Any) -> InferenceRequest:
    return InferenceRequest(
        "fraud",
        None,
        [
            Tensor("amount", "FP32", (1, 2), np.array([[1.5, 2.0]], dtype=np.float32)),
            Tensor("note", "BYTES", (2,), np.array([b"hello", b"\xff\xfe"], dtype=object)),
        ],
        id=id,
        parameters=parameters,
    )


def response() -> InferenceResponse:
    return InferenceResponse(
        "fraud", "1", [Tensor("label", "INT64", (1, 1), np.array([[1]], dtype=np.int64))]
    )


def counted(metrics: Metrics, model: str, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "modelport_payload_records_total", {"model": model, "result": result}
    )
    return value or 0.0


def logger(tmp_path: Path, metrics: Metrics, **kwargs: Any) -> PayloadLogger:
    kwargs.setdefault("now", lambda: NOON)
    return PayloadLogger(tmp_path / "payloads", metrics, **kwargs)


def lines(tmp_path: Path, name: str = "fraud", day: str = "2024-05-10") -> list[str]:
    path = tmp_path / "payloads" / name / f"{day}.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def test_sample_zero_logs_nothing_and_counts_nothing(tmp_path: Path) -> None:
    metrics = Metrics()
    log = logger(tmp_path, metrics)
    m = model(sample=0.0)
    for _ in range(50):
        log.offer(m, settings(m), request(), response(), "http")
    assert log.flush() == 0
    assert not (tmp_path / "payloads").exists()
    assert counted(metrics, "fraud", "written") == 0


def test_the_draw_decides_against_the_sample_rate(tmp_path: Path) -> None:
    draws = iter([0.5, 0.2, 0.39, 0.4])
    log = logger(tmp_path, Metrics(), draw=lambda: next(draws))
    m = model(sample=0.4)
    for i in range(4):
        log.offer(m, settings(m), request(id=f"r{i}"), response(), "http")
    log.flush()
    assert [json.loads(line)["id"] for line in lines(tmp_path)] == ["r1", "r2"]


def test_record_format(tmp_path: Path) -> None:
    metrics = Metrics()
    log = logger(tmp_path, metrics)
    m = model()
    log.offer(m, settings(m), request(priority_hint="low"), response(), "grpc")
    log.flush()
    [line] = lines(tmp_path)
    record = json.loads(line)
    assert record == {
        "time": "2024-05-10T12:00:00.000Z",
        "model": "fraud",
        "version": "1",
        "id": "req-1",
        "protocol": "grpc",
        "parameters": {"priority_hint": "low"},
        "inputs": [
            {"name": "amount", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.0]},
            {
                "name": "note",
                "datatype": "BYTES",
                "shape": [2],
                "data": ["hello", {"base64": base64.b64encode(b"\xff\xfe").decode()}],
            },
        ],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [1, 1], "data": [1]}],
    }
    assert counted(metrics, "fraud", "written") == 1


def test_failures_are_logged_with_their_error_and_outputs_can_be_left_out(tmp_path: Path) -> None:
    log = logger(tmp_path, Metrics())
    m = model(include_outputs=False)
    log.offer(m, settings(m), request(), response(), "http")
    log.offer(m, settings(m), request(), None, "http", "input 'amount': card 4111111111111111")
    log.flush()
    first, second = (json.loads(line) for line in lines(tmp_path))
    assert "outputs" not in first and "error" not in first
    assert second["error"] == "input 'amount': card [CARD]"


def test_large_tensors_are_cut_to_the_record_limit_with_a_marker(tmp_path: Path) -> None:
    log = logger(tmp_path, Metrics())
    m = model(max_bytes_per_record=2048)
    big = np.arange(1_000_000, dtype=np.float64).reshape(1000, 1000) / 7
    req = InferenceRequest("fraud", None, [Tensor("x", "FP64", (1000, 1000), big)], id="big")
    log.offer(m, settings(m), req, None, "http")
    log.flush()
    [line] = lines(tmp_path)
    assert len(line) <= 2048
    tensor = json.loads(line)["inputs"][0]
    assert tensor["truncated"] is True
    assert tensor["shape"] == [1000, 1000]
    assert 0 < len(tensor["data"]) < 1000
    assert tensor["data"][:2] == [0.0, 1 / 7]


def test_non_finite_floats_keep_lines_strict_json(tmp_path: Path) -> None:
    log = logger(tmp_path, Metrics())
    m = model()
    data = np.array([np.nan, np.inf, 1.0], dtype=np.float32)
    req = InferenceRequest("fraud", None, [Tensor("x", "FP32", (3,), data)])
    log.offer(m, settings(m), req, None, "http")
    log.flush()
    [line] = lines(tmp_path)
    record = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert record["inputs"][0]["data"] == ["nan", "inf", 1.0]


def test_personal_data_is_redacted_before_writing(tmp_path: Path) -> None:
    log = logger(tmp_path, Metrics())
    m = model(redact_fields=["Customer_Name", "NOTE"])
    req = request(
        id="mail jane@example.com",
        customer_name="Jane Doe",
        contact={"phone": "+971 50 123 4567", "eid": "784-1990-1234567-1"},
    )
    log.offer(m, settings(m), req, response(), "http")
    log.flush()
    [line] = lines(tmp_path)
    for raw in ("jane@example.com", "Jane Doe", "123 4567", "1234567", "hello"):
        assert raw not in line
    record = json.loads(line)
    assert record["id"] == "mail [EMAIL]"
    assert record["parameters"] == {
        "customer_name": "[REDACTED]",
        "contact": {"phone": "[PHONE]", "eid": "[EMIRATES_ID]"},
    }
    assert record["inputs"][1]["data"] == "[REDACTED]"
    assert record["inputs"][0]["data"] == [1.5, 2.0]


def test_bytes_elements_are_scanned(tmp_path: Path) -> None:
    log = logger(tmp_path, Metrics())
    m = model()
    text = np.array([b"card 4111-1111-1111-1111", b"ok"], dtype=object)
    req = InferenceRequest("fraud", None, [Tensor("t", "BYTES", (2,), text)])
    log.offer(m, settings(m), req, None, "http")
    log.flush()
    assert json.loads(lines(tmp_path)[0])["inputs"][0]["data"] == ["card [CARD]", "ok"]


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    metrics = Metrics()
    log = logger(tmp_path, metrics, queue_size=2)
    m = model()
    for _ in range(5):
        log.offer(m, settings(m), request(), response(), "http")
    assert counted(metrics, "fraud", "dropped") == 3
    log.flush()
    assert len(lines(tmp_path)) == 2
    assert counted(metrics, "fraud", "written") == 2


@pytest.mark.parametrize(
    "id",
    [
        'x\n{"model":"fraud","id":"forged"}',
        'x\r\n{"forged":true}\r\n',
        "x\u2028y\u2029z\x00",
    ],
)
def test_newlines_in_ids_cannot_forge_records(tmp_path: Path, id: str) -> None:
    log = logger(tmp_path, Metrics())
    m = model()
    log.offer(m, settings(m), request(id=id, note=id), response(), "http")
    log.offer(m, settings(m), request(id="next"), response(), "http")
    log.flush()
    raw = (tmp_path / "payloads" / "fraud" / "2024-05-10.jsonl").read_bytes()
    assert raw.count(b"\n") == 2 and b"\r" not in raw
    first, second = (json.loads(line) for line in raw.decode().split("\n")[:2])
    assert first["id"] == id and first["parameters"] == {"note": id}
    assert second["id"] == "next"


def test_records_go_to_one_file_per_model_per_utc_day(tmp_path: Path) -> None:
    clock = [NOON]
    log = logger(tmp_path, Metrics(), now=lambda: clock[0])
    a, b = model("a"), model("b")
    log.offer(a, settings(a), request(), None, "http")
    clock[0] = NOON + 12 * 3600  # midnight UTC starts the next day
    log.offer(a, settings(a), request(), None, "http")
    log.offer(b, settings(b), request(), None, "http")
    log.flush()
    assert len(lines(tmp_path, "a", "2024-05-10")) == 1
    assert len(lines(tmp_path, "a", "2024-05-11")) == 1
    assert len(lines(tmp_path, "b", "2024-05-11")) == 1
    file = tmp_path / "payloads" / "a" / "2024-05-10.jsonl"
    assert file.stat().st_mode & 0o777 == 0o600


def test_the_writer_thread_writes_everything_queued_before_close(tmp_path: Path) -> None:
    metrics = Metrics()
    log = logger(tmp_path, metrics)
    log.start()
    m = model()
    for i in range(300):
        log.offer(m, settings(m), request(id=str(i)), None, "http")
    log.close()
    assert [json.loads(line)["id"] for line in lines(tmp_path)] == [str(i) for i in range(300)]
    log.offer(m, settings(m), request(), None, "http")
    assert counted(metrics, "fraud", "dropped") == 1


def test_an_unwritable_directory_counts_failures(tmp_path: Path) -> None:
    (tmp_path / "payloads").write_text("a file where the directory should be")
    metrics = Metrics()
    log = logger(tmp_path, metrics)
    m = model()
    log.offer(m, settings(m), request(), None, "http")
    log.flush()
    assert counted(metrics, "fraud", "failed") == 1


# ---------------------------------------------------------------- residency


@pytest.mark.parametrize(
    ("region", "residency", "allowed"),
    [
        ("ae-dxb-1", [], True),
        (None, [], True),
        ("ae-dxb-1", ["ae"], True),
        ("ae-dxb-1", ["sa", "ae-dxb-1"], True),
        ("ae-auh-1", ["ae-dxb-1"], False),
        ("sa-ruh-1", ["ae"], False),
        ("aes-x-1", ["ae"], False),
        (None, ["ae"], False),
    ],
)
def test_region_allowed(region: str | None, residency: list[str], allowed: bool) -> None:
    assert region_allowed(region, residency) is allowed


def test_a_node_outside_the_models_residency_writes_nothing(tmp_path: Path) -> None:
    metrics = Metrics()
    m = model(residency=["ae"])
    outside = logger(tmp_path, metrics, region="sa-ruh-1")
    outside.offer(m, settings(m), request(), None, "http")
    outside.flush()
    assert lines(tmp_path) == []
    assert counted(metrics, "fraud", "residency") == 1
    inside = logger(tmp_path, metrics, region="ae-dxb-1")
    inside.offer(m, settings(m), request(), None, "http")
    inside.flush()
    assert len(lines(tmp_path)) == 1


# ---------------------------------------------------------------- retention


def test_retention_sweep_deletes_day_files_past_their_models_retention(tmp_path: Path) -> None:
    clock = [NOON]
    log = logger(tmp_path, Metrics(), now=lambda: clock[0])
    base = tmp_path / "payloads"
    days = ["2024-05-01", "2024-05-02", "2024-05-03", "2024-05-10"]
    for name in ("short", "gone"):
        (base / name).mkdir(parents=True)
        for day in days:
            (base / name / f"{day}.jsonl").write_text("{}\n")
    (base / "short" / "notes.jsonl").write_text("kept: not a day file\n")
    # Today is 2024-05-10; with 7 days, the 2nd's newest record (23:59) is 7 days and
    # 12 hours old, but the 3rd's may be only 6 days and 12 hours old.
    assert log.sweep({"short": 7}) == 2
    assert sorted(p.name for p in (base / "short").iterdir()) == [
        "2024-05-03.jsonl",
        "2024-05-10.jsonl",
        "notes.jsonl",
    ]
    # A model no longer served keeps the default (30 days) until the clock moves on.
    assert len(list((base / "gone").iterdir())) == 4
    clock[0] = NOON + 30 * DAY
    assert log.sweep({"short": 7}) == 5
    assert [p.name for p in (base / "gone").iterdir()] == ["2024-05-10.jsonl"]


def test_retention_runs_at_start_in_the_background_task(tmp_path: Path) -> None:
    log = logger(tmp_path, Metrics())
    old = tmp_path / "payloads" / "fraud" / "2024-01-01.jsonl"
    old.parent.mkdir(parents=True)
    old.write_text("{}\n")

    async def main() -> None:
        stop = asyncio.Event()

        def retention() -> dict[str, int]:
            stop.set()  # one sweep, then the task ends
            return {"fraud": 30}

        await log.run_retention(retention, stop)

    asyncio.run(main())
    assert not old.exists()


# ---------------------------------------------------------------- sealing


def key_file(tmp_path: Path, name: str) -> tuple[Path, LocalKeyProvider]:
    key = os.urandom(32)
    path = tmp_path / name
    path.write_bytes(base64.b64encode(key))
    return path, LocalKeyProvider(key)


def test_sealed_records_read_back_and_hold_no_plaintext(tmp_path: Path) -> None:
    path, keys = key_file(tmp_path, "master.key")
    metrics = Metrics()
    m = model(seal=True)
    for _ in range(2):  # a restarted server starts a second segment in the same file
        log = logger(tmp_path, metrics, keys=keys)
        log.offer(m, settings(m), request(id="secret-id", note="plain words"), response(), "http")
        log.flush()
    file = tmp_path / "payloads" / "fraud" / "2024-05-10.jsonl"
    raw = file.read_text()
    assert "secret-id" not in raw and "plain words" not in raw and "hello" not in raw
    assert len(raw.splitlines()) == 4
    records = list(read_records(file, keys))
    assert [r["id"] for r in records] == ["secret-id", "secret-id"]
    assert records[0]["inputs"][1]["data"][0] == "hello"
    assert counted(metrics, "fraud", "written") == 2

    result = CliRunner().invoke(
        app, ["payloads", "read", str(file), "--master-key-file", str(path), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in result.output.splitlines()] == ["secret-id"] * 2
    table = CliRunner().invoke(app, ["payloads", "read", str(file), "--master-key-file", str(path)])
    assert table.exit_code == 0, table.output
    rows = [line for line in table.output.splitlines() if "secret-id" in line]
    assert len(rows) == 2 and all("fraud" in row and "http" in row for row in rows)


def test_a_wrong_key_or_an_edited_header_is_refused(tmp_path: Path) -> None:
    _, keys = key_file(tmp_path, "master.key")
    other_path, other = key_file(tmp_path, "other.key")
    m = model(seal=True)
    log = logger(tmp_path, Metrics(), keys=keys)
    log.offer(m, settings(m), request(), None, "http")
    log.flush()
    file = tmp_path / "payloads" / "fraud" / "2024-05-10.jsonl"
    with pytest.raises(InvalidRequest, match="wrong key"):
        list(read_records(file, other))
    with pytest.raises(InvalidRequest, match="master key is needed"):
        list(read_records(file, None))
    result = CliRunner().invoke(
        app, ["payloads", "read", str(file), "--master-key-file", str(other_path)]
    )
    assert result.exit_code == 2
    assert "wrong key" in result.output

    header, record = file.read_text().splitlines()
    edited = json.loads(header)
    edited["model"] = "another"
    file.write_text(json.dumps(edited) + "\n" + record + "\n")
    with pytest.raises(InvalidRequest, match="authentication failed"):
        list(read_records(file, keys))


def test_seal_without_a_key_is_refused_and_warned_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    log = logger(tmp_path, metrics)
    m = model(seal=True)
    with caplog.at_level(logging.WARNING, "modelport.payloads"):
        log.review([m])
        for _ in range(3):
            log.offer(m, settings(m), request(), None, "http")
    log.flush()
    assert not (tmp_path / "payloads").exists()
    assert counted(metrics, "fraud", "refused") == 3
    warnings = [r for r in caplog.records if "no master key" in r.getMessage()]
    assert len(warnings) == 1


def test_disabled_or_missing_settings_mean_no_logging() -> None:
    assert enabled_settings(parse_model_config({}, "t")) is None
    off = parse_model_config({"modelport": {"payload_log": {"enabled": False}}}, "t")
    assert enabled_settings(off) is None


@pytest.mark.parametrize(
    ("block", "complaint"),
    [
        ({"payload_log": {"enabled": True, "sample": 1.5}}, "sample"),
        ({"payload_log": {"enabled": True, "retention_days": 0}}, "retention_days"),
        ({"payload_log": {"enabled": True, "max_bytes_per_record": 10}}, "max_bytes_per_record"),
        ({"payload_log": {"enabled": True, "redact": ["x"]}}, "redact"),
        ({"residency": ["AE"]}, "residency"),
        ({"residency": ["ae dxb"]}, "residency"),
    ],
)
def test_bad_payload_settings_are_refused_naming_the_field(
    block: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ConfigError, match=complaint):
        parse_model_config({"modelport": block}, "config.yaml")


def test_server_settings_for_payloads(tmp_path: Path) -> None:
    env = {"MODELPORT_PAYLOAD_LOG_DIR": str(tmp_path), "MODELPORT_REGION": "ae-dxb-1"}
    config = load_server_config(None, env, {})
    assert config.payload_log_dir == tmp_path and config.region == "ae-dxb-1"
    with pytest.raises(ConfigError, match="MODELPORT_REGION"):
        load_server_config(None, {"MODELPORT_REGION": "AE/../x"}, {})
