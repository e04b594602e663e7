"""Repository load stays inside the model, and repository unload respects traffic policies.

A load request may replace a model's config (Triton's ``config`` parameter),
but not to read another model's files, a file elsewhere on the disk, or to
widen how loading works (backend, pickles, tenant); a link in a version
directory may not lead out of it either. Reasons never tell where anything
outside the repository is, or whether it exists. And a repository unload of
versions a traffic policy routes to is refused, as /api/v1's own unload is.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Server, start_server, stop_server
from tests.integration.models import _save, add_sub_model, identity_model

pytestmark = pytest.mark.integration

TRANSPORTS = ["http", "grpc"]
PAYLOAD_LOG = {
    "enabled": True,
    "sample": 1.0,
    "redact_fields": ["INPUT0"],
    "include_outputs": False,
}
PROTECTED_CONFIG = json.dumps(
    {"modelport": {"payload_log": PAYLOAD_LOG, "rate_limit": {"rate": 1000, "burst": 1000}}}
)
ROW = {"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory beside the repository, holding a model file of its own."""
    root = tmp_path_factory.mktemp("outside")
    _save(add_sub_model(), root / "secret" / "model.onnx")
    _save(identity_model("FP32"), root / "elsewhere" / "1" / "model.onnx")
    (root / "secret" / "config.pbtxt").write_text("max_batch_size: 8\n")
    return root


@pytest.fixture(scope="module")
def payload_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("confined-payloads")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, outside: Path) -> Path:
    root = tmp_path_factory.mktemp("confined-repo")
    _save(identity_model("FP32"), root / "a" / "1" / "model.onnx")
    _save(add_sub_model(), root / "b" / "1" / "model.onnx")
    # The repository's own config may not leave the version directory either.
    for name, filename in {
        "cfg_traversal": "../../b/1/model.onnx",
        "cfg_abs_there": "/etc/passwd",
        "cfg_abs_missing": "/etc/no-such-file-here",
    }.items():
        _save(identity_model("FP32"), root / name / "1" / "model.onnx")
        (root / name / "config.yaml").write_text(f"default_model_filename: {filename!r}\n")
    # Links out of the version directory: into another model, and out of the repository.
    (root / "linked" / "1").mkdir(parents=True)
    os.symlink("../../b/1/model.onnx", root / "linked" / "1" / "model.onnx")
    (root / "linked_out" / "1").mkdir(parents=True)
    os.symlink(outside / "secret" / "model.onnx", root / "linked_out" / "1" / "model.onnx")
    # A link that stays inside its version directory is fine.
    _save(identity_model("FP32"), root / "linked_in" / "1" / "real.onnx")
    os.symlink("real.onnx", root / "linked_in" / "1" / "model.onnx")
    # A version directory linking into another model, a model directory out of the repository.
    (root / "d").mkdir()
    os.symlink("../b/1", root / "d" / "1")
    (root / "d" / "config.yaml").write_text("parameters: {tenant: {string_value: acme}}\n")
    os.symlink(outside / "elsewhere", root / "f")
    # A config file linking to another model's config, or out of the repository.
    _save(identity_model("FP32"), root / "cfg_linked" / "1" / "model.onnx")
    os.symlink("../c/config.yaml", root / "cfg_linked" / "config.yaml")
    _save(identity_model("FP32"), root / "cfg_linked_out" / "1" / "model.onnx")
    os.symlink(outside / "secret" / "config.pbtxt", root / "cfg_linked_out" / "config.pbtxt")
    # Data protection the repository's config sets, which a load may not switch off.
    _save(identity_model("FP32"), root / "c" / "1" / "model.onnx")
    (root / "c" / "config.yaml").write_text(PROTECTED_CONFIG)
    # Label files: inside the model directory they are fine; elsewhere they are not.
    for name, label in {"labeled": "labels.txt", "labeled_out": "/etc/passwd"}.items():
        _save(identity_model("FP32"), root / name / "1" / "model.onnx")
        (root / name / "labels.txt").write_text("a\nb\nc\nd\n")
        output = {"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4], "label_filename": label}
        (root / name / "config.yaml").write_text(json.dumps({"output": [output]}))
    # What modelport refuses: an ensemble without steps, custom operation libraries.
    (root / "ens" / "1").mkdir(parents=True)
    (root / "ens" / "config.yaml").write_text(
        json.dumps({"platform": "ensemble", "ensemble_scheduling": {"step": []}})
    )
    _save(identity_model("FP32"), root / "oplib" / "1" / "model.onnx")
    (root / "oplib" / "config.yaml").write_text(
        json.dumps({"model_operations": {"op_library_filename": ["/tmp/evil.so"]}})
    )
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    # Two versions for the traffic-policy tests.
    for version in (1, 2):
        _save(identity_model("FP32"), root / "pinned" / str(version) / "model.onnx")
    (root / "pinned" / "config.yaml").write_text("version_policy: {all: {}}\n")
    return root


@pytest.fixture(scope="module")
def srv(
    repo: Path, payload_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("confined-log")
    settings = work / "server.yaml"
    settings.write_text(f"payload_log_dir: {json.dumps(str(payload_dir))}\n")
    server = start_server(repo, work / "server.log", "--config", str(settings))
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def clients(srv: Server) -> Iterator[dict[str, Any]]:
    http = httpclient.InferenceServerClient(srv.http_url, network_timeout=60.0)
    grpc = grpcclient.InferenceServerClient(srv.grpc_url)
    yield {"http": http, "grpc": grpc}
    http.close()
    grpc.close()


def status_of(kind: str, exc: InferenceServerException) -> str:
    """The transport status as one word: 400, INVALID_ARGUMENT ..."""
    return str(exc.status()).removeprefix("StatusCode.")


def refused_load(client: Any, kind: str, name: str, config: dict[str, Any]) -> str:
    with pytest.raises(InferenceServerException) as info:
        client.load_model(name, config=json.dumps(config))
    assert status_of(kind, info.value) == ("400" if kind == "http" else "INVALID_ARGUMENT")
    return str(info.value.message())


def index(srv: Server) -> dict[str, list[dict[str, Any]]]:
    r = httpx.post(f"{srv.base}/v2/repository/index", json={}, timeout=30)
    assert r.status_code == 200, r.text
    out: dict[str, list[dict[str, Any]]] = {}
    for entry in r.json():
        out.setdefault(entry["name"], []).append(entry)
    return out


def reason(srv: Server, name: str) -> str:
    return " ".join(e.get("reason", "") for e in index(srv)[name])


def assert_a_serves_its_own_file(srv: Server) -> None:
    body = {
        "inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]
    }
    r = httpx.post(f"{srv.base}/v2/models/a/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["name"] == "OUTPUT0"
    assert r.json()["outputs"][0]["data"] == [1, 2, 3, 4]
    assert [e["state"] for e in index(srv)["a"]] == ["READY"]
    assert reason(srv, "a") == ""


# ------------------------------------------------------- overrides refused


@pytest.mark.parametrize("kind", TRANSPORTS)
@pytest.mark.parametrize(
    "filename", ["../../b/1/model.onnx", "../1/../../b/1/model.onnx", "/etc/passwd"]
)
def test_override_cannot_name_another_file(
    srv: Server, clients: dict[str, Any], kind: str, filename: str
) -> None:
    message = refused_load(clients[kind], kind, "a", {"default_model_filename": filename})
    assert "default_model_filename" in message
    assert filename not in message
    assert "passwd" not in message
    # Nothing changed: A serves its own file, and the index tells nothing of the path.
    assert_a_serves_its_own_file(srv)
    reasons = [e.get("reason", "") for entries in index(srv).values() for e in entries]
    assert not any("passwd" in r or "b/1" in r for r in reasons)


def test_refusal_does_not_tell_whether_a_path_exists(srv: Server, clients: dict[str, Any]) -> None:
    there = refused_load(clients["http"], "http", "a", {"default_model_filename": "/etc/passwd"})
    missing = refused_load(
        clients["http"], "http", "a", {"default_model_filename": "/etc/no-such-file-here"}
    )
    assert there == missing


@pytest.mark.parametrize("kind", TRANSPORTS)
@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"backend": "python"}, "backend"),
        ({"platform": "pytorch_libtorch"}, "platform"),
        ({"runtime": "libtriton_other.so"}, "runtime"),
        ({"modelport": {"allow_unsafe_pickle": True}}, "modelport.allow_unsafe_pickle"),
        ({"modelport": {"residency": ["ae"]}}, "modelport.residency"),
        ({"parameters": {"tenant": {"string_value": "other"}}}, "parameters.tenant"),
        ({"cc_model_filenames": {"8.0": "../../b/1/model.onnx"}}, "cc_model_filenames"),
    ],
)
def test_override_cannot_widen_loading(
    srv: Server, clients: dict[str, Any], kind: str, override: dict[str, Any], field: str
) -> None:
    message = refused_load(clients[kind], kind, "a", {"max_batch_size": 2, **override})
    assert repr(field) in message
    assert "load request" in message
    assert_a_serves_its_own_file(srv)
    assert clients["http"].get_model_config("a")["max_batch_size"] == 64


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_harmless_override_still_loads(srv: Server, clients: dict[str, Any], kind: str) -> None:
    client = clients[kind]
    client.load_model("a", config=json.dumps({"max_batch_size": 4, "dynamic_batching": {}}))
    try:
        config = clients["http"].get_model_config("a")
        assert config["max_batch_size"] == 4
        assert "dynamic_batching" in config
    finally:
        client.load_model("a")
    assert clients["http"].get_model_config("a")["max_batch_size"] == 64
    assert_a_serves_its_own_file(srv)


def test_config_read_back_edited_and_sent_again_loads(srv: Server, clients: dict[str, Any]) -> None:
    """The shown config repeats backend, platform and the modelport block: that is fine."""
    http = clients["http"]
    config = http.get_model_config("a")
    assert config["backend"] == "onnxruntime"
    assert config["platform"] == "onnxruntime_onnx"
    config["max_batch_size"] = 8
    http.load_model("a", config=json.dumps(config))
    try:
        assert http.get_model_config("a")["max_batch_size"] == 8
    finally:
        http.load_model("a")
    assert_a_serves_its_own_file(srv)


# ------------------------------------------- the repository's protections


@pytest.mark.parametrize("kind", TRANSPORTS)
@pytest.mark.parametrize(
    ("modelport", "field"),
    [
        (
            {"payload_log": {**PAYLOAD_LOG, "redact_fields": [], "include_outputs": True}},
            "modelport.payload_log",
        ),
        ({"payload_log": {**PAYLOAD_LOG, "enabled": False}}, "modelport.payload_log"),
        ({"payload_log": None}, "modelport.payload_log"),
        ({"rate_limit": None}, "modelport.rate_limit"),
        ({"instance_process": True}, "modelport.instance_process"),
    ],
)
def test_override_cannot_weaken_the_repository_s_protections(
    srv: Server, clients: dict[str, Any], kind: str, modelport: dict[str, Any], field: str
) -> None:
    message = refused_load(clients[kind], kind, "c", {"max_batch_size": 8, "modelport": modelport})
    assert repr(field) in message
    assert "repository's own config" in message
    shown = clients["http"].get_model_config("c")
    assert shown["max_batch_size"] == 64
    assert shown["modelport"]["payload_log"]["redact_fields"] == ["INPUT0"]
    assert shown["modelport"]["rate_limit"] == {"rate": 1000, "burst": 1000}


def test_payloads_stay_redacted_after_a_refused_override(
    srv: Server, clients: dict[str, Any], payload_dir: Path
) -> None:
    http = clients["http"]
    unredacted = {**PAYLOAD_LOG, "redact_fields": [], "include_outputs": True}
    with pytest.raises(InferenceServerException):
        http.load_model(
            "c", config=json.dumps({"max_batch_size": 8, "modelport": {"payload_log": unredacted}})
        )
    # Read back, edited and sent again, the config still loads with its protections.
    config = http.get_model_config("c")
    config["max_batch_size"] = 8
    http.load_model("c", config=json.dumps(config))
    try:
        body = {"inputs": [{**ROW, "data": [7.25, 8.5, 9.75, 10.125]}]}
        r = httpx.post(f"{srv.base}/v2/models/c/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 30
        text = ""
        while "INPUT0" not in text and time.monotonic() < deadline:
            text = "".join(p.read_text() for p in (payload_dir / "c").glob("*.jsonl"))
            time.sleep(0.05)
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
        logged = [t for record in records for t in record["inputs"] if t["name"] == "INPUT0"]
        assert logged
        # Only the values are checked: a timestamp may hold the same digits.
        assert all(t["data"] == "[REDACTED]" for t in logged), logged
        assert all("outputs" not in record for record in records), records
    finally:
        http.load_model("c")


# -------------------------------------------- the repository's own files


@pytest.mark.parametrize("name", ["cfg_traversal", "cfg_abs_there", "cfg_abs_missing"])
def test_repository_config_cannot_leave_the_version_directory(
    srv: Server, clients: dict[str, Any], name: str
) -> None:
    entries = index(srv)[name]
    assert [e["state"] for e in entries] == ["UNAVAILABLE"]
    why = reason(srv, name)
    assert "default_model_filename" in why
    assert "/etc" not in why and "no-such-file" not in why and "b/1" not in why
    for kind in TRANSPORTS:
        with pytest.raises(InferenceServerException, match="default_model_filename") as info:
            clients[kind].load_model(name)
        assert "/etc" not in str(info.value.message())
    # Whether /etc/passwd exists or not, the reason is the same.
    assert reason(srv, "cfg_abs_there") == reason(srv, "cfg_abs_missing")


@pytest.mark.parametrize("name", ["linked", "linked_out"])
def test_link_out_of_the_version_directory_is_refused(
    srv: Server, clients: dict[str, Any], outside: Path, name: str
) -> None:
    assert [e["state"] for e in index(srv)[name]] == ["UNAVAILABLE"]
    why = reason(srv, name)
    assert "model.onnx: a link leading out of the version directory" in why
    assert str(outside) not in why and "secret" not in why and "b/1" not in why
    for kind in TRANSPORTS:
        with pytest.raises(InferenceServerException, match="link leading out") as info:
            clients[kind].load_model(name)
        assert status_of(kind, info.value) == ("400" if kind == "http" else "INVALID_ARGUMENT")
        assert clients[kind].is_model_ready(name) is False


def test_link_inside_the_version_directory_serves(clients: dict[str, Any]) -> None:
    assert clients["http"].is_model_ready("linked_in") is True


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("d", "1: the version directory is a link leading out of its model directory"),
        ("f", "f: the model directory is a link leading out of the repository"),
    ],
)
def test_directory_linked_out_is_refused(
    srv: Server, clients: dict[str, Any], outside: Path, name: str, why: str
) -> None:
    """``d/1 -> ../b/1`` would serve b's file under d's name and tenant."""
    assert [e["state"] for e in index(srv)[name]] == ["UNAVAILABLE"]
    assert why in reason(srv, name)
    for kind in TRANSPORTS:
        with pytest.raises(InferenceServerException, match="link leading out") as info:
            clients[kind].load_model(name)
        message = str(info.value.message())
        assert "b/1" not in message and str(outside) not in message
        assert "elsewhere" not in message
        assert clients[kind].is_model_ready(name) is False
    shown = reason(srv, name)
    assert "b/1" not in shown and str(outside) not in shown and "elsewhere" not in shown
    r = httpx.post(f"{srv.base}/v2/models/{name}/infer", json={"inputs": [ROW]}, timeout=30)
    assert r.status_code == 503, r.text


@pytest.mark.parametrize(
    ("name", "file"), [("cfg_linked", "config.yaml"), ("cfg_linked_out", "config.pbtxt")]
)
def test_config_file_linked_out_of_its_model_is_refused(
    srv: Server, clients: dict[str, Any], outside: Path, name: str, file: str
) -> None:
    """``cfg_linked/config.yaml -> ../c/config.yaml`` would serve it under c's config."""
    assert [e["state"] for e in index(srv)[name]] == ["UNAVAILABLE"]
    why = f"{name}/{file}: the config file is a link leading out of the model directory"
    assert why in reason(srv, name)
    for kind in TRANSPORTS:
        with pytest.raises(InferenceServerException, match="config file is a link") as info:
            clients[kind].load_model(name)
        message = str(info.value.message())
        assert why in message
        assert "c/config" not in message and str(outside) not in message
        assert "secret" not in message
        assert clients[kind].is_model_ready(name) is False
    shown = reason(srv, name)
    assert "c/config" not in shown and str(outside) not in shown and "secret" not in shown
    r = httpx.post(f"{srv.base}/v2/models/{name}/infer", json={"inputs": [ROW]}, timeout=30)
    assert r.status_code == 503, r.text


def test_label_file_inside_the_model_directory_serves(clients: dict[str, Any]) -> None:
    assert clients["http"].is_model_ready("labeled") is True


@pytest.mark.parametrize(
    ("name", "why"),
    [
        (
            "labeled_out",
            "output[0].label_filename must name a file inside the model directory",
        ),
        ("ens", "an ensemble needs at least one step"),
        ("oplib", "model_operations.op_library_filename is not supported"),
    ],
)
def test_config_naming_files_the_server_would_not_use_is_refused(
    srv: Server, clients: dict[str, Any], name: str, why: str
) -> None:
    assert [e["state"] for e in index(srv)[name]] == ["UNAVAILABLE"]
    assert why in reason(srv, name)
    for kind in TRANSPORTS:
        with pytest.raises(InferenceServerException) as info:
            clients[kind].load_model(name)
        message = str(info.value.message())
        assert why in message
        assert "passwd" not in message and "evil" not in message
        assert clients[kind].is_model_ready(name) is False


def test_reasons_name_no_absolute_path(srv: Server, repo: Path) -> None:
    everything = json.dumps(index(srv))
    assert str(repo) not in everything
    assert str(repo.resolve()) not in everything
    # Inside the repository, paths are relative to its root.
    assert "broken/1/model.onnx" in reason(srv, "broken")
    with pytest.raises(InferenceServerException) as info:
        httpclient.InferenceServerClient(srv.http_url).load_model("broken")
    assert str(repo) not in str(info.value.message())
    r = httpx.post(f"{srv.base}/v2/models/broken/infer", json={"inputs": []}, timeout=30)
    assert r.status_code == 503
    assert str(repo) not in r.text


# ------------------------------------------------- unload and traffic policies


def put_policy(srv: Server, body: dict[str, Any], revision: int) -> httpx.Response:
    return httpx.put(
        f"{srv.base}/api/v1/models/pinned/traffic",
        json=body,
        headers={"If-Match": str(revision)},
        timeout=60,
    )


@pytest.fixture
def policy(srv: Server) -> Iterator[None]:
    """Every pinned request goes to version 1; the policy is dropped afterwards."""
    r = put_policy(srv, {"routes": [{"version": "1", "weight": 100}]}, 0)
    assert r.status_code == 200, r.text
    yield
    current = httpx.get(f"{srv.base}/api/v1/models/pinned/traffic", timeout=30).json()
    dropped = httpx.delete(
        f"{srv.base}/api/v1/models/pinned/traffic",
        headers={"If-Match": str(current["revision"])},
        timeout=60,
    )
    assert dropped.status_code == 204, dropped.text


def infer_pinned(srv: Server) -> httpx.Response:
    body = {
        "inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]
    }
    return httpx.post(f"{srv.base}/v2/models/pinned/infer", json=body, timeout=30)


@pytest.mark.parametrize("kind", TRANSPORTS)
@pytest.mark.usefixtures("policy")
def test_unload_of_versions_a_policy_routes_to_is_refused(
    srv: Server, clients: dict[str, Any], kind: str
) -> None:
    with pytest.raises(InferenceServerException) as info:
        clients[kind].unload_model("pinned")
    assert status_of(kind, info.value) == ("409" if kind == "http" else "FAILED_PRECONDITION")
    message = str(info.value.message())
    assert "traffic policy (revision" in message
    assert "version 1" in message
    # Nothing was unloaded: unversioned requests are still routed and answered.
    assert clients[kind].is_model_ready("pinned") is True
    answer = infer_pinned(srv)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == "1"
    # The refusal is in the audit history, with what refused it.
    history = httpx.get(f"{srv.base}/api/v1/models/pinned/history", timeout=30).json()
    refused = next(e for e in history["events"] if e["action"] == "model.unload")
    assert "traffic policy" in refused["detail"]["error"]


def test_unload_without_a_policy_still_works(srv: Server, clients: dict[str, Any]) -> None:
    http = clients["http"]
    http.unload_model("pinned")
    try:
        assert http.is_model_ready("pinned") is False
        assert infer_pinned(srv).status_code == 503
    finally:
        http.load_model("pinned")
    assert infer_pinned(srv).status_code == 200
