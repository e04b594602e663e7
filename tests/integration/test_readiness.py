"""Readiness and the models that cannot be served.

Triton's strict readiness is the default: ``/v2/health/ready``, gRPC
ServerReady and the standard grpc.health.v1 service (what Kubernetes' gRPC
probes ask) say not ready while a model failed to load, and not for versions
left unloaded on purpose. A directory whose name is not a valid model name
is listed in the repository index as UNAVAILABLE with the reason instead of
vanishing or failing every request;
the misnamed directory is no model that failed, so it leaves readiness alone.
A model with sequence batching among them serves (tests/integration/test_sequences.py
has the rest).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Server, start_server, stop_server
from tests.integration.models import _save, identity_model

SEQUENCE_CONFIG = """\
max_batch_size: 4
sequence_batching:
  max_sequence_idle_microseconds: 5000000
"""
#: Directory names refused as model names: a space, a leading '-', '..' inside,
#: an escape sequence, and bytes that are not UTF-8.
MISNAMED = [b"bad name", b"-dash", b"a..b", b"esc\x1b[31m", b"latin\xff"]


def _good(root: Path, name: str, versions: tuple[int, ...] = (1,)) -> None:
    for v in versions:
        _save(identity_model("FP32"), root / name / str(v) / "model.onnx")


def _broken(root: Path, name: str = "broken") -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / "model.onnx").write_bytes(b"this is not an onnx model")


def _ready(server: Server) -> int:
    return httpx.get(f"{server.base}/v2/health/ready", timeout=10).status_code


def _grpc_ready(server: Server) -> bool:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        ready: bool = client.is_server_ready()
        return ready
    finally:
        client.close()


#: The services whose grpc.health.v1 status follows readiness.
HEALTH_SERVICES = ("", "inference.GRPCInferenceService")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health(server: Server) -> set[int]:
    """The grpc.health.v1 statuses of the overall service and the inference service."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return {
            stub.Check(health_pb2.HealthCheckRequest(service=s), timeout=10).status
            for s in HEALTH_SERVICES
        }


def _index(server: Server) -> list[dict[str, str]]:
    r = httpx.post(f"{server.base}/v2/repository/index", json={}, timeout=10)
    assert r.status_code == 200, r.text
    entries: list[dict[str, str]] = r.json()
    return entries


@pytest.fixture(scope="module")
def troubled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Strict readiness (the default) over a good model and every kind of trouble."""
    root = tmp_path_factory.mktemp("troubled_repo")
    _good(root, "good")
    _broken(root)
    _good(root, "seq")
    (root / "seq" / "config.yaml").write_text(SEQUENCE_CONFIG)
    for name in MISNAMED:
        os.makedirs(os.path.join(os.fsencode(root), name, b"1"))
    srv = start_server(root, tmp_path_factory.mktemp("troubled_log") / "server.log")
    yield srv
    stop_server(srv)


# ------------------------------------------------------------ strict readiness


def test_a_model_that_failed_to_load_makes_the_server_not_ready(troubled: Server) -> None:
    assert httpx.get(f"{troubled.base}/v2/health/live", timeout=10).status_code == 200
    assert _ready(troubled) == 503
    assert _grpc_ready(troubled) is False
    assert _health(troubled) == {NOT_SERVING}
    # The good model serves all the same.
    assert httpx.get(f"{troubled.base}/v2/models/good/ready", timeout=10).status_code == 200


def test_relaxed_readiness_ignores_failed_models(tmp_path: Path) -> None:
    _good(tmp_path / "repo", "good")
    _broken(tmp_path / "repo")
    srv = start_server(tmp_path / "repo", tmp_path / "server.log", "--strict-readiness", "false")
    try:
        assert _ready(srv) == 200
        assert _grpc_ready(srv) is True
        assert _health(srv) == {SERVING}
    finally:
        stop_server(srv)


def test_grpc_health_follows_readiness_as_models_are_unloaded_and_loaded(tmp_path: Path) -> None:
    """Kubernetes' gRPC probes ask grpc.health.v1: it must answer what ServerReady answers."""
    repo = tmp_path / "repo"
    _good(repo, "good")
    _broken(repo)
    srv = start_server(repo, tmp_path / "server.log")
    channel = grpc.insecure_channel(srv.grpc_url)
    try:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=60
        )
        assert next(watch).status == NOT_SERVING
        assert _health(srv) == {NOT_SERVING}
        r = httpx.post(f"{srv.base}/v2/repository/models/broken/unload", timeout=30)
        assert r.status_code == 200, r.text
        assert _health(srv) == {SERVING}
        assert _grpc_ready(srv) is True
        assert next(watch).status == SERVING  # a Watch stream is told of the change
        # A load that fails makes it NOT_SERVING again.
        r = httpx.post(f"{srv.base}/v2/repository/models/broken/load", timeout=30)
        assert r.status_code == 400, r.text
        assert _health(srv) == {NOT_SERVING}
        assert next(watch).status == NOT_SERVING
        watch.cancel()
    finally:
        channel.close()
        stop_server(srv)


def test_versions_unloaded_on_purpose_keep_the_server_ready(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _good(repo, "good")
    # Two versions, the default policy serves only the latest: version 1 is
    # UNAVAILABLE on purpose.
    _good(repo, "two", versions=(1, 2))
    srv = start_server(repo, tmp_path / "server.log")
    try:
        assert _ready(srv) == 200
        assert _grpc_ready(srv) is True
        # Triton's repository unload, and a version unloaded through /api/v1.
        r = httpx.post(f"{srv.base}/v2/repository/models/good/unload", timeout=30)
        assert r.status_code == 200, r.text
        r = httpx.post(f"{srv.base}/api/v1/models/two/versions/2/unload", timeout=30)
        assert r.status_code == 200, r.text
        states = {(e["name"], e.get("version")): e["state"] for e in _index(srv)}
        assert states[("good", "1")] == "UNAVAILABLE"
        assert states[("two", "2")] == "UNAVAILABLE"
        assert _ready(srv) == 200
        assert _grpc_ready(srv) is True

        # A model that fails to load counts, until an operator unloads it.
        _broken(repo, "late")
        r = httpx.post(f"{srv.base}/v2/repository/models/late/load", timeout=30)
        assert r.status_code == 400, r.text
        assert _ready(srv) == 503
        r = httpx.post(f"{srv.base}/v2/repository/models/late/unload", timeout=30)
        assert r.status_code == 200, r.text
        assert _ready(srv) == 200
    finally:
        stop_server(srv)


# ------------------------------------------------------------ misnamed models


def test_a_misnamed_directory_is_listed_with_the_naming_rule(troubled: Server) -> None:
    entries = {e["name"]: e for e in _index(troubled)}
    client = grpcclient.InferenceServerClient(troubled.grpc_url)
    try:
        grpc_entries = {m.name: m for m in client.get_model_repository_index().models}
    finally:
        client.close()
    # Shown escaped: the escape sequence and the byte that is not UTF-8 never
    # reach a client or a terminal as they are.
    shown = ["bad name", "-dash", "a..b", "esc\\x1b[31m", "latin\\udcff"]
    for name in shown:
        entry = entries[name]
        assert entry["state"] == "UNAVAILABLE"
        assert "not a valid model name" in entry["reason"]
        assert "letters, digits" in entry["reason"]
        assert grpc_entries[name].state == "UNAVAILABLE"
        assert "not a valid model name" in grpc_entries[name].reason
    assert not any("\x1b" in e["name"] + e.get("reason", "") for e in entries.values())
    # Listed, not served.
    ready_only = httpx.post(
        f"{troubled.base}/v2/repository/index", json={"ready": True}, timeout=10
    ).json()
    assert {e["name"] for e in ready_only} == {"good", "seq"}


def test_a_repository_with_lost_and_found_and_a_good_model_is_ready(tmp_path: Path) -> None:
    """A repository at the root of an ext4 volume (a Kubernetes PVC) holds ``lost+found``."""
    repo = tmp_path / "repo"
    _good(repo, "good")
    (repo / "lost+found").mkdir()
    srv = start_server(repo, tmp_path / "server.log")
    try:
        assert _ready(srv) == 200
        assert _grpc_ready(srv) is True
        entries = {e["name"]: e for e in _index(srv)}
        assert entries["lost+found"]["state"] == "UNAVAILABLE"
        assert "not a valid model name" in entries["lost+found"]["reason"]
    finally:
        stop_server(srv)


def test_a_misnamed_directory_leaves_the_index_when_it_leaves_the_disk(tmp_path: Path) -> None:
    """Without --poll-interval: the next index request, or a load, reads the names again."""
    repo = tmp_path / "repo"
    _good(repo, "good")
    _good(repo, "bad name")
    srv = start_server(repo, tmp_path / "server.log")
    try:
        assert _ready(srv) == 200
        assert "bad name" in {e["name"] for e in _index(srv)}
        (repo / "bad name").rename(tmp_path / "elsewhere")
        assert {e["name"] for e in _index(srv)} == {"good"}
        # One that appears is listed at once too, and the server stays ready.
        (repo / "new name").mkdir()
        r = httpx.post(f"{srv.base}/v2/repository/models/good/load", timeout=30)
        assert r.status_code == 200, r.text
        assert {e["name"] for e in _index(srv)} == {"good", "new name"}
        assert _ready(srv) == 200
    finally:
        stop_server(srv)


# ----------------------------------------------------------- sequence batching


def test_a_sequence_model_loads_and_takes_only_sequence_requests(troubled: Server) -> None:
    entry = next(e for e in _index(troubled) if e["name"] == "seq")
    assert entry["state"] == "READY"

    body = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [0] * 4}]}
    r = httpx.post(f"{troubled.base}/v2/models/seq/infer", json=body, timeout=10)
    assert r.status_code == 400
    assert "needs a 'sequence_id'" in r.json()["error"]

    client = grpcclient.InferenceServerClient(troubled.grpc_url)
    try:
        inp = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
        inp.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        with pytest.raises(InferenceServerException) as info:
            client.infer("seq", [inp])
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        out = client.infer("seq", [inp], sequence_id=1, sequence_start=True, sequence_end=True)
        assert out.as_numpy("OUTPUT0").tolist() == [[1.0] * 4]
    finally:
        client.close()
