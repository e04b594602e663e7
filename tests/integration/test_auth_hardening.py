"""Authorization edges found by attack: what each caller may reach, on every path.

One server with authentication on serves ``stats`` (tenant globex: a model
whose name is also Triton's statistics route) and ``fraud-1`` (tenant acme).
Keys are made with ``modelport keys create`` before it starts, as in
test_auth.py. Also here: streams that outlive their key, duplicate
credentials, WebSocket upgrades, /metrics per caller, and the modes of the
files the server creates.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.integration.conftest import Server, start_server, stop_server
from tests.integration.test_auth import BODY, _model, bearer, cli, create_key, raw_post

pytestmark = pytest.mark.integration

Setup = tuple[Server, dict[str, str]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("hardening")
    repo = root / "repo"
    _model(repo, "stats", "globex")
    _model(repo, "fraud-1", "acme")
    data = root / "data"
    keys = {
        "admin": create_key(data, "--role", "admin", "--models", "*"),
        "acme-viewer": create_key(data, "--role", "viewer", "--models", "*", "--tenant", "acme"),
        "acme-invoker": create_key(data, "--role", "invoker", "--models", "*", "--tenant", "acme"),
        "fraud-invoker": create_key(data, "--role", "invoker", "--models", "fraud-*"),
        "fraud-1-viewer": create_key(data, "--role", "viewer", "--models", "fraud-1"),
        "stats": create_key(data, "--role", "invoker", "--models", "stats", "--tenant", "globex"),
        "stream": create_key(data, "--role", "invoker", "--models", "fraud-*"),
    }
    server = start_server(
        repo, root / "server.log", "--data-dir", str(data), "--auth-failure-burst", "1000"
    )
    yield server, keys
    stop_server(server)


#: Every route of the model ``stats`` (method, path); none is the statistics listing.
STATS_MODEL_ROUTES = [
    ("POST", "/v2/models/stats/infer"),
    ("POST", "/v2/models/stats/versions/1/infer"),
    ("GET", "/v2/models/stats/config"),
    ("GET", "/v2/models/stats/versions/1/config"),
    ("GET", "/v2/models/stats/versions/1"),
    ("GET", "/v2/models/stats/ready"),
    ("GET", "/v2/models/stats/stats"),
]


@pytest.mark.parametrize(("method", "path"), STATS_MODEL_ROUTES)
def test_a_model_named_stats_needs_a_role_on_that_model(
    setup: Setup, method: str, path: str
) -> None:
    server, keys = setup
    for who in ("acme-viewer", "acme-invoker", "fraud-invoker"):
        reply = httpx.request(method, f"{server.base}{path}", json=BODY, headers=bearer(keys[who]))
        assert reply.status_code == 403, (who, reply.text)
        assert "'stats'" in reply.json()["error"]
    reply = httpx.request(method, f"{server.base}{path}", json=BODY, headers=bearer(keys["stats"]))
    assert reply.status_code == 200, reply.text


def test_a_model_named_stats_behind_an_escaped_path_is_refused_too(setup: Setup) -> None:
    server, keys = setup
    # Percent-escaped, the request skips the direct infer path and goes through the router.
    assert raw_post(server, "/v2/models/%73tats/infer", keys["acme-invoker"]) == 403
    assert raw_post(server, "/v2/models/%73tats/infer", keys["stats"]) == 200


def test_statistics_list_only_the_models_a_caller_may_see(setup: Setup) -> None:
    server, keys = setup
    url = f"{server.base}/v2/models/stats"
    for who, expected in [("acme-viewer", {"fraud-1"}), ("stats", {"stats"})]:
        reply = httpx.get(url, headers=bearer(keys[who]))
        assert reply.status_code == 200, reply.text
        assert {s["name"] for s in reply.json()["model_stats"]} == expected


def _grpc_inputs() -> list[Any]:
    inputs = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for i in inputs:
        i.set_data_from_numpy(np.ones((1, 16), np.float32))
    return inputs


def test_a_stream_ends_unauthenticated_soon_after_its_key_is_revoked(setup: Setup) -> None:
    server, keys = setup
    token = keys["stream"]
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(
        callback=lambda result, error: results.put((result, error)),
        headers={"authorization": f"Bearer {token}"},
    )
    try:
        client.async_stream_infer("fraud-1", _grpc_inputs(), request_id="before")
        result, error = results.get(timeout=30)
        assert error is None, error
        assert result.get_response().id == "before"
        done = cli("keys", "revoke", token.split("_")[1], "--data-dir", str(server_data(server)))
        assert done.returncode == 0, done.stderr
        revoked = time.monotonic()
        error = None
        while error is None:
            assert time.monotonic() - revoked < 5, "the stream still answers a revoked key"
            client.async_stream_infer("fraud-1", _grpc_inputs(), request_id="after")
            try:
                result, error = results.get(timeout=0.2)
            except queue.Empty:
                continue
            if error is None:
                time.sleep(0.05)  # poll interval: one request per answer, not a flood
        # The stream's own status (an in-stream error_message has no status).
        assert error.status() == "StatusCode.UNAUTHENTICATED", error
        assert time.monotonic() - revoked < 3
    finally:
        client.stop_stream()
        client.close()


def server_data(server: Server) -> Path:
    """The --data-dir the module's server was started with."""
    args = server.process.args
    assert isinstance(args, list)
    return Path(args[args.index("--data-dir") + 1])


def test_two_authorization_headers_are_a_400(setup: Setup) -> None:
    server, keys = setup
    twice = [("Authorization", f"Bearer {keys['admin']}")] * 2
    mixed = [("Authorization", f"Bearer {keys['admin']}"), ("Authorization", "Bearer nope")]
    for headers in (twice, mixed):
        for method, url in [
            ("GET", f"{server.base}/v2"),
            ("POST", f"{server.base}/v2/models/fraud-1/infer"),  # the direct infer path
            ("GET", f"http://127.0.0.1:{server.metrics_port}/metrics"),
        ]:
            reply = httpx.request(method, url, json=BODY, headers=headers)
            assert reply.status_code == 400, (url, reply.text)
            assert "one Authorization header" in reply.json()["error"]


def test_two_authorization_metadata_entries_are_invalid_argument(setup: Setup) -> None:
    server, keys = setup
    entry = ("authorization", f"Bearer {keys['admin']}")
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerMetadata(service_pb2.ServerMetadataRequest(), metadata=[entry]).name
        with pytest.raises(grpc.RpcError) as refused:
            stub.ServerMetadata(service_pb2.ServerMetadataRequest(), metadata=[entry, entry])
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "one authorization" in str(refused.value.details())
        stream = stub.ModelStreamInfer(iter([]), metadata=[entry, entry])
        with pytest.raises(grpc.RpcError) as stream_refused:
            list(stream)
        assert stream_refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_metrics_show_a_caller_only_the_models_it_may_see(setup: Setup) -> None:
    server, keys = setup
    for model in ("fraud-1", "stats"):  # so both models have series
        reply = httpx.post(
            f"{server.base}/v2/models/{model}/infer", json=BODY, headers=bearer(keys["admin"])
        )
        assert reply.status_code == 200, reply.text
    for port in (server.http_port, server.metrics_port):
        url = f"http://127.0.0.1:{port}/metrics"
        everything = httpx.get(url, headers=bearer(keys["admin"])).text
        assert 'model="fraud-1"' in everything and 'model="stats"' in everything
        scoped = httpx.get(url, headers=bearer(keys["fraud-1-viewer"]))
        assert scoped.status_code == 200
        assert 'model="fraud-1"' in scoped.text
        assert 'model="stats"' not in scoped.text
        assert "modelport_models_loaded " in scoped.text  # server-wide, no model label


def raw_upgrade(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    """A WebSocket handshake request; (status, body) of the answer, read to the close."""
    head = (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall((head + "\r\n").encode())
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    return int(status_line.split(b" ", 2)[1]), rest.partition(b"\r\n\r\n")[2]


def test_a_websocket_upgrade_gets_the_answer_of_a_plain_request(setup: Setup) -> None:
    server, keys = setup
    for port, path in [(server.http_port, "/v2"), (server.metrics_port, "/metrics")]:
        status, body = raw_upgrade(port, path)
        assert status == 401
        assert "authentication required" in json.loads(body)["error"]
    status, body = raw_upgrade(server.http_port, "/ws", keys["admin"])
    assert status == 404
    assert "no route" in json.loads(body)["error"]
    status, body = raw_upgrade(server.http_port, "/v2/models/stats/config", keys["acme-viewer"])
    assert status == 403
    assert "permission denied" in json.loads(body)["error"]
    status, body = raw_upgrade(server.http_port, "/v2", keys["admin"])
    assert status == 200  # answered as HTTP, never switched (101)
    assert json.loads(body)["name"]


PAYLOAD_LOG = "modelport:\n  payload_log:\n    enabled: true\n    sample: 1.0\n"


def test_state_and_payload_files_are_the_owners_only(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _model(repo, "logged", None)
    config = repo / "logged" / "config.yaml"
    config.write_text(config.read_text() + PAYLOAD_LOG)
    data = tmp_path / "data"
    previous = os.umask(0o022)  # a usual umask, which alone would leave files readable by all
    try:
        server = start_server(repo, tmp_path / "server.log", "--data-dir", str(data))
    finally:
        os.umask(previous)
    try:
        reply = httpx.post(f"{server.base}/v2/models/logged/infer", json=BODY)
        assert reply.status_code == 200, reply.text
        deadline = time.monotonic() + 30
        while not list((data / "payloads").glob("logged/*.jsonl")):
            assert time.monotonic() < deadline, "no payload file was written"
            time.sleep(0.05)

        def mode(path: Path) -> int:
            return stat.S_IMODE(path.stat().st_mode)

        state_files = list(data.glob("state.db*"))
        assert data / "state.db" in state_files
        assert {p.name: mode(p) for p in state_files} == {p.name: 0o600 for p in state_files}
        assert mode(data) == 0o700
        payloads = data / "payloads"
        assert mode(payloads) == 0o700
        assert mode(payloads / "logged") == 0o700
        for file in (payloads / "logged").iterdir():
            assert mode(file) == 0o600, file
    finally:
        stop_server(server)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_new_level_of_the_data_dir_is_the_owners_only_under_umask_000(
    tmp_path: Path,
) -> None:
    """``umask 000`` (common in containers): no directory made on the way is open to all."""
    data = tmp_path / "x" / "d0" / "x"
    create = 'umask 000 && exec "$0" -m modelport keys create --data-dir "$1" --role admin'
    done = subprocess.run(
        ["sh", "-c", create + ' --models "*"', sys.executable, str(data)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for level in (tmp_path / "x", tmp_path / "x" / "d0", data):
        assert _mode(level) == 0o700, level

    repo = tmp_path / "repo"
    _model(repo, "logged", None)
    config = repo / "logged" / "config.yaml"
    config.write_text(config.read_text() + PAYLOAD_LOG)
    server_data = tmp_path / "s" / "d0" / "data"
    payloads = tmp_path / "p" / "d1" / "payloads"
    settings = tmp_path / "server.yaml"
    settings.write_text(f"payload_log_dir: {payloads}\n")
    previous = os.umask(0)
    try:
        server = start_server(
            repo,
            tmp_path / "server.log",
            "--data-dir",
            str(server_data),
            "--config",
            str(settings),
        )
    finally:
        os.umask(previous)
    try:
        reply = httpx.post(f"{server.base}/v2/models/logged/infer", json=BODY)
        assert reply.status_code == 200, reply.text
        deadline = time.monotonic() + 30
        while not list(payloads.glob("logged/*.jsonl")):
            assert time.monotonic() < deadline, "no payload file was written"
            time.sleep(0.05)
        made = [tmp_path / "s", tmp_path / "s" / "d0", server_data]
        made += [tmp_path / "p", tmp_path / "p" / "d1", payloads, payloads / "logged"]
        assert {str(p): _mode(p) for p in made} == {str(p): 0o700 for p in made}
    finally:
        stop_server(server)
