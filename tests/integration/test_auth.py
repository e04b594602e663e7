"""Authentication and authorization against the real server, on both transports.

Keys are made with ``modelport keys create`` against the server's data
directory before it starts; the server binds 127.0.0.1 and turns
authentication on because keys exist. Models: ``fraud-1`` (tenant acme, two
versions), ``fraud-2`` (tenant globex), ``other`` (no tenant).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Server, start_server, stop_server
from tests.integration.models import add_sub_model

ROW = [1.0] * 16
BODY = {
    "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": ROW},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": ROW},
    ]
}


def _model(root: Path, name: str, tenant: str | None, versions: int = 1) -> None:
    import onnx

    for v in range(1, versions + 1):
        (root / name / str(v)).mkdir(parents=True)
        onnx.save(add_sub_model(), root / name / str(v) / "model.onnx")
    config = "max_batch_size: 8\n"
    if versions > 1:
        config += "version_policy: {all: {}}\n"
    if tenant is not None:
        config += f"parameters: {{tenant: {{string_value: {tenant}}}}}\n"
    (root / name / "config.yaml").write_text(config)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelport", *args], capture_output=True, text=True, check=False
    )


def create_key(data_dir: Path, *args: str) -> str:
    done = cli("keys", "create", "--data-dir", str(data_dir), *args)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith("mpk_") and "cannot be shown again" in done.stderr
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    root = tmp_path_factory.mktemp("auth")
    repo = root / "repo"
    _model(repo, "fraud-1", "acme", versions=2)
    _model(repo, "fraud-2", "globex")
    _model(repo, "other", None)
    data = root / "data"
    keys = {
        "admin": create_key(data, "--role", "admin", "--models", "*", "--name", "root"),
        "viewer": create_key(data, "--role", "viewer", "--models", "*"),
        "acme": create_key(data, "--role", "invoker", "--models", "fraud-*", "--tenant", "acme"),
        "fraud": create_key(data, "--role", "invoker", "--models", "fraud-*"),
        "ops": create_key(data, "--role", "operator", "--models", "fraud-*", "--name", "ops-bot"),
        "revoked": create_key(data, "--role", "admin", "--models", "*"),
    }
    revoked_id = keys["revoked"].split("_")[1]
    assert cli("keys", "revoke", revoked_id, "--data-dir", str(data)).returncode == 0
    listing = cli("keys", "list", "--data-dir", str(data)).stdout
    assert "revoked" in listing and "ops-bot" in listing
    assert all(t.split("_", 2)[2] not in listing for t in keys.values())
    # An expired key, made with a clock in the past (no waiting).
    from modelport.controlplane.keys import KeyService
    from modelport.controlplane.store import Database, KeyStore

    past = datetime.now(UTC) - timedelta(days=2)
    with Database.open(Database.sqlite_url(data), clock=lambda: past) as database:
        _, keys["expired"] = KeyService(KeyStore(database), lambda: past).create(
            role="admin", models=["*"], actor="test", expires="1d"
        )
    server = start_server(
        repo, root / "server.log", "--data-dir", str(data), "--auth-failure-burst", "1000"
    )
    yield server, keys
    stop_server(server)


def test_start_says_authentication_is_on(setup: tuple[Server, dict[str, str]]) -> None:
    server, _ = setup
    assert "authentication on" in server.log()


def test_health_stays_open(setup: tuple[Server, dict[str, str]]) -> None:
    server, _ = setup
    assert httpx.get(f"{server.base}/v2/health/live").status_code == 200
    assert httpx.get(f"{server.base}/v2/health/ready").status_code == 200
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert client.is_server_live() and client.is_server_ready()
    client.close()


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Basic dXNlcjpwdw==", "Bearer junk", "Bearer mpk_0000_x", "Bearer a.b.c"],
)
def test_missing_or_malformed_credentials_get_401(
    setup: tuple[Server, dict[str, str]], header: str | None
) -> None:
    server, _ = setup
    headers = {} if header is None else {"Authorization": header}
    for method, path in [("GET", "/v2"), ("POST", "/v2/models/fraud-1/infer")]:
        reply = httpx.request(method, f"{server.base}{path}", headers=headers, json=BODY)
        assert reply.status_code == 401, reply.text
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert "error" in reply.json()


@pytest.mark.parametrize("which", ["revoked", "expired"])
def test_revoked_and_expired_keys_get_401(setup: tuple[Server, dict[str, str]], which: str) -> None:
    server, keys = setup
    reply = httpx.get(f"{server.base}/v2", headers=bearer(keys[which]))
    assert reply.status_code == 401


def test_wrong_secret_with_a_real_id_gets_401(setup: tuple[Server, dict[str, str]]) -> None:
    server, keys = setup
    prefix, key_id, secret = keys["admin"].split("_", 2)
    forged = f"{prefix}_{key_id}_{'A' * len(secret)}"
    assert httpx.get(f"{server.base}/v2", headers=bearer(forged)).status_code == 401


def test_invoke_in_scope(setup: tuple[Server, dict[str, str]]) -> None:
    server, keys = setup
    for who in ("acme", "fraud", "admin"):
        reply = httpx.post(
            f"{server.base}/v2/models/fraud-1/infer", json=BODY, headers=bearer(keys[who])
        )
        assert reply.status_code == 200, (who, reply.text)


def test_other_tenant_and_out_of_scope_get_the_same_403(
    setup: tuple[Server, dict[str, str]],
) -> None:
    server, keys = setup
    bodies = []
    for model in ("fraud-2", "fraud-9"):  # another tenant's model, and one that does not exist
        reply = httpx.post(
            f"{server.base}/v2/models/{model}/infer", json=BODY, headers=bearer(keys["acme"])
        )
        assert reply.status_code == 403
        bodies.append(reply.json()["error"].replace(model, "M"))
    for model in ("other", "nope"):  # out of the pattern: exists / does not exist
        reply = httpx.post(
            f"{server.base}/v2/models/{model}/infer", json=BODY, headers=bearer(keys["fraud"])
        )
        assert reply.status_code == 403
        bodies.append(reply.json()["error"].replace(model, "M"))
    assert len(set(bodies)) == 1, bodies
    # A viewer may read metadata but not infer.
    viewer = bearer(keys["viewer"])
    assert httpx.get(f"{server.base}/v2/models/other", headers=viewer).status_code == 200
    reply = httpx.post(f"{server.base}/v2/models/other/infer", json=BODY, headers=viewer)
    assert reply.status_code == 403


def raw_post(server: Server, path: str, token: str) -> int:
    """POST with the path exactly as written (no client-side normalisation)."""
    body = json.dumps(BODY).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as s:
        s.sendall(request)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return int(reply.split(b" ", 2)[1])


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/..%2Fother/infer",
        "/v2/models/fraud-1/../other/infer",
        "/v2/models/fraud-1%2F..%2Fother/infer",
        "/v2/models/fraud-1/versions/../../other/infer",
        "/v2/models/fraud-*/infer",
    ],
)
def test_path_tricks_never_reach_another_model(
    setup: tuple[Server, dict[str, str]], path: str
) -> None:
    server, keys = setup
    status = raw_post(server, path, keys["fraud"])
    assert status in (400, 403, 404), status


def test_metrics_need_viewer_on_both_ports(setup: tuple[Server, dict[str, str]]) -> None:
    server, keys = setup
    for port in (server.http_port, server.metrics_port):
        url = f"http://127.0.0.1:{port}/metrics"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers=bearer(keys["viewer"])).status_code == 200


def test_management_api_roles_and_actor(setup: tuple[Server, dict[str, str]]) -> None:
    server, keys = setup
    api = f"{server.base}/api/v1"
    assert httpx.get(f"{api}/models").status_code == 401
    assert httpx.get(f"{api}/models", headers=bearer(keys["viewer"])).status_code == 200
    assert httpx.get(f"{server.base}/docs").status_code == 401
    policy = {"routes": [{"version": "1", "weight": 50}, {"version": "2", "weight": 50}]}
    url = f"{api}/models/fraud-1/traffic"
    for who in ("viewer", "fraud"):
        headers = {**bearer(keys[who]), "If-Match": "0"}
        assert httpx.put(url, json=policy, headers=headers).status_code == 403
    headers = {**bearer(keys["ops"]), "If-Match": "0"}
    reply = httpx.put(url, json=policy, headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.json()["updated_by"] == "ops-bot"
    other = httpx.put(f"{api}/models/other/traffic", json=policy, headers=headers)
    assert other.status_code == 403
    history = httpx.get(f"{api}/models/fraud-1/history", headers=bearer(keys["viewer"])).json()
    assert history["events"][0]["actor"] == "ops-bot"


def test_tritonclient_http(setup: tuple[Server, dict[str, str]]) -> None:
    server, keys = setup
    client = httpclient.InferenceServerClient(server.http_url)
    inputs = [httpclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for i in inputs:
        i.set_data_from_numpy(np.ones((1, 16), np.float32))
    result = client.infer("fraud-1", inputs, headers=bearer(keys["fraud"]))
    assert result.as_numpy("OUTPUT0")[0][0] == 2.0
    with pytest.raises(InferenceServerException) as denied:
        client.infer("other", inputs, headers=bearer(keys["fraud"]))
    assert "permission denied" in str(denied.value)
    with pytest.raises(InferenceServerException):
        client.infer("fraud-1", inputs)
    client.close()


def _grpc_inputs() -> list[Any]:
    inputs = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for i in inputs:
        i.set_data_from_numpy(np.ones((1, 16), np.float32))
    return inputs


def test_tritonclient_grpc(setup: tuple[Server, dict[str, str]]) -> None:
    server, keys = setup
    client = grpcclient.InferenceServerClient(server.grpc_url)
    good = {"authorization": f"Bearer {keys['fraud']}"}
    result = client.infer("fraud-1", _grpc_inputs(), headers=good)
    assert result.as_numpy("OUTPUT0")[0][0] == 2.0
    cases = [
        (None, "fraud-1", "StatusCode.UNAUTHENTICATED"),
        ({"authorization": "Bearer nope"}, "fraud-1", "StatusCode.UNAUTHENTICATED"),
        ({"authorization": f"Bearer {keys['revoked']}"}, "fraud-1", "StatusCode.UNAUTHENTICATED"),
        (good, "other", "StatusCode.PERMISSION_DENIED"),
        (good, "nope", "StatusCode.PERMISSION_DENIED"),
        ({"authorization": f"Bearer {keys['acme']}"}, "fraud-2", "StatusCode.PERMISSION_DENIED"),
    ]
    messages = []
    for headers, model, status in cases:
        with pytest.raises(InferenceServerException) as refused:
            client.infer(model, _grpc_inputs(), headers=headers)
        assert refused.value.status() == status, (model, refused.value)
        if status.endswith("PERMISSION_DENIED"):
            messages.append(refused.value.message().replace(model, "M"))
    assert len(set(messages)) == 1
    with pytest.raises(InferenceServerException) as meta:
        client.get_model_metadata("fraud-1")
    assert meta.value.status() == "StatusCode.UNAUTHENTICATED"
    viewer = {"authorization": f"Bearer {keys['viewer']}"}
    assert client.get_model_metadata("fraud-1", headers=viewer).name == "fraud-1"
    with pytest.raises(InferenceServerException) as load:
        client.load_model("fraud-1", headers=viewer)
    assert load.value.status() == "StatusCode.PERMISSION_DENIED"
    client.close()


def test_denials_and_failures_are_audited(setup: tuple[Server, dict[str, str]]) -> None:
    server, keys = setup
    history = httpx.get(
        f"{server.base}/api/v1/history?limit=1000", headers=bearer(keys["admin"])
    ).json()
    actions = {e["action"] for e in history["events"]}
    assert {"auth.failure", "auth.denied", "key.create", "key.revoke"} <= actions


def test_brute_force_gets_429_and_is_audited(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _model(repo, "fraud-1", None)
    data = tmp_path / "data"
    create_key(data, "--role", "viewer", "--models", "*")
    server = start_server(
        repo, tmp_path / "server.log", "--data-dir", str(data), "--auth-failure-burst", "3"
    )
    try:
        statuses = []
        for i in range(10):
            token = f"mpk_{i:012x}_{'x' * 43}"
            reply = httpx.get(f"{server.base}/v2", headers=bearer(token))
            statuses.append(reply.status_code)
        assert statuses[:3] == [401, 401, 401]
        assert statuses[3:] == [429] * 7
        assert int(reply.headers["retry-after"]) >= 1
        client = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException) as grpc_refusal:
            client.get_server_metadata(headers={"authorization": "Bearer mpk_x"})
        assert grpc_refusal.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        client.close()
        assert httpx.get(f"{server.base}/v2/health/ready").status_code == 200
    finally:
        stop_server(server)
    exported = cli("audit", "export", "--data-dir", str(data), "--json").stdout.splitlines()
    actions = [json.loads(line)["action"] for line in exported]
    assert actions.count("auth.blocked") >= 1
    assert 1 <= actions.count("auth.failure") <= 3  # sampled, not one row per attempt


def test_public_address_without_credentials_refuses_to_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modelport", "serve", "--host", "0.0.0.0",
         "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "requires authentication" in done.stderr and "--insecure" in done.stderr


def test_insecure_serves_openly_with_a_warning(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _model(repo, "fraud-1", None)
    server = start_server(repo, tmp_path / "server.log", "--host", "0.0.0.0", "--insecure")
    try:
        assert httpx.get(f"{server.base}/v2").status_code == 200
        assert "authentication is OFF (--insecure)" in server.log()
    finally:
        stop_server(server)


def test_loopback_without_keys_stays_open_and_says_so(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _model(repo, "fraud-1", None)
    server = start_server(repo, tmp_path / "server.log")
    try:
        assert httpx.get(f"{server.base}/v2").status_code == 200
        assert "authentication off: serving on loopback" in server.log()
    finally:
        stop_server(server)


def test_listings_show_only_the_models_a_caller_may_see(
    setup: tuple[Server, dict[str, str]],
) -> None:
    server, keys = setup
    acme = bearer(keys["acme"])  # fraud-* of tenant acme: fraud-1 only
    index = httpx.post(f"{server.base}/v2/repository/index", json={}, headers=acme)
    assert index.status_code == 200
    assert {e["name"] for e in index.json()} == {"fraud-1"}
    stats = httpx.get(f"{server.base}/v2/models/stats", headers=acme).json()["model_stats"]
    assert {s["name"] for s in stats} == {"fraud-1"}
    models = httpx.get(f"{server.base}/api/v1/models", headers=acme).json()["models"]
    assert {m["name"] for m in models} == {"fraud-1"}
    assert httpx.get(f"{server.base}/v1/models", headers=acme).json() == {"models": ["fraud-1"]}
    assert httpx.get(f"{server.base}/v1/models").status_code == 401
    history = httpx.get(f"{server.base}/api/v1/history", headers=acme).json()["events"]
    assert {e["model"] for e in history} <= {"fraud-1"}
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        metadata = {"authorization": acme["Authorization"]}
        listed = client.get_model_repository_index(headers=metadata, as_json=True)
        assert {m["name"] for m in listed.get("models", [])} == {"fraud-1"}
        grpc_stats = client.get_inference_statistics(headers=metadata, as_json=True)
        assert {s["name"] for s in grpc_stats.get("model_stats", [])} == {"fraud-1"}
    finally:
        client.close()
    # An unrestricted viewer sees them all.
    viewer = bearer(keys["viewer"])
    index = httpx.post(f"{server.base}/v2/repository/index", json={}, headers=viewer)
    assert {e["name"] for e in index.json()} == {"fraud-1", "fraud-2", "other"}


def test_repository_load_and_unload_are_audited_with_the_caller(
    setup: tuple[Server, dict[str, str]],
) -> None:
    server, keys = setup
    ops = bearer(keys["ops"])  # operator on fraud-*, named ops-bot
    url = f"{server.base}/v2/repository/models/fraud-2"
    assert httpx.post(f"{url}/unload", json={}, headers=ops).status_code == 200
    assert httpx.post(f"{url}/load", json={}, headers=ops).status_code == 200
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        client.unload_model("fraud-2", headers={"authorization": ops["Authorization"]})
        client.load_model("fraud-2", headers={"authorization": ops["Authorization"]})
    finally:
        client.close()
    events = httpx.get(
        f"{server.base}/api/v1/models/fraud-2/history", headers=bearer(keys["admin"])
    ).json()["events"]
    recorded = [(e["action"], e["actor"]) for e in events if e["action"].startswith("model.")]
    assert recorded[:4] == [
        ("model.load", "ops-bot"),
        ("model.unload", "ops-bot"),
        ("model.load", "ops-bot"),
        ("model.unload", "ops-bot"),
    ]
    assert server.alive()


def test_forwarded_headers_cannot_dodge_brute_force_blocking(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _model(repo, "m", None)
    data = tmp_path / "data"
    create_key(data, "--role", "viewer", "--models", "*")
    server = start_server(
        repo, tmp_path / "s.log", "--data-dir", str(data), "--auth-failure-burst", "3"
    )
    try:
        statuses = []
        for i in range(8):
            spoofed = {"X-Forwarded-For": f"10.9.9.{i}", **bearer("mpk_0_nope")}
            statuses.append(httpx.get(f"{server.base}/v2/models/m", headers=spoofed).status_code)
        assert 429 in statuses, statuses
    finally:
        stop_server(server)


def test_management_commands_send_the_token(setup: tuple[Server, dict[str, str]]) -> None:
    server, keys = setup
    refused = cli("models", "list", "--url", server.base)
    assert refused.returncode == 1
    assert "401" in refused.stderr
    listed = cli("models", "--token", keys["acme"], "list", "--url", server.base, "--json")
    assert listed.returncode == 0, listed.stderr
    assert {m["name"] for m in json.loads(listed.stdout)["models"]} == {"fraud-1"}
    env = {**os.environ, "MODELPORT_TOKEN": keys["viewer"]}
    history = subprocess.run(
        [sys.executable, "-m", "modelport", "deploy", "history", "other", "--url", server.base],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert history.returncode == 0, history.stderr
