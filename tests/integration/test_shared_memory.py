"""System shared memory (Triton's extension) with tritonclient, over HTTP and gRPC.

The clients' own ``tritonclient.utils.shared_memory`` creates and fills the
segments; the server reads inputs from them and writes outputs into them.
Hostile segments (spans past the end, truncated after registration, the
server's own keys) are refused with a 400 and the server keeps serving.
A second module-scoped server with authentication on checks that a region
belongs to whoever registered it.
"""

from __future__ import annotations

import importlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import CLIENTS, Server, client_for, start_server, stop_server
from tests.integration.models import _save, identity_model


def _pkg_resources_shim() -> None:
    """tritonclient 2.41's shared_memory imports ``pkg_resources``, gone from setuptools
    since 81; give it the one function it calls (tritonclient itself is untouched)."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        import importlib.resources
        import sys
        import types

        shim = types.ModuleType("pkg_resources")

        def resource_filename(package: str, name: str) -> str:
            return str(importlib.resources.files(package) / name)

        shim.resource_filename = resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim


_pkg_resources_shim()
shm: Any = importlib.import_module("tritonclient.utils.shared_memory")

SHAPE = (2, 4)
NBYTES = 2 * 4 * 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("shm")
    repo = root / "repo"
    _save(identity_model("FP32"), repo / "identity_fp32" / "1" / "model.onnx")
    _save(identity_model("BYTES"), repo / "identity_bytes" / "1" / "model.onnx")
    srv = start_server(repo, root / "server.log")
    yield srv
    stop_server(srv)


def _key() -> str:
    return f"/mptest_{secrets.token_hex(6)}"


class Segment:
    """A client segment made with tritonclient's utility; destroyed at the end."""

    def __init__(self, byte_size: int) -> None:
        self.key = _key()
        self.name = f"r{secrets.token_hex(4)}"
        self.byte_size = byte_size
        self.handle = shm.create_shared_memory_region(self.name, self.key, byte_size)

    @property
    def path(self) -> Path:
        return Path("/dev/shm") / self.key.lstrip("/")

    def destroy(self) -> None:
        shm.destroy_shared_memory_region(self.handle)


@pytest.fixture
def segments() -> Iterator[list[Segment]]:
    made: list[Segment] = []
    yield made
    for s in made:
        s.destroy()


def _segment(made: list[Segment], byte_size: int) -> Segment:
    s = Segment(byte_size)
    made.append(s)
    return s


def _infer_shm(
    client: Any,
    mod: Any,
    model: str,
    inp: tuple[str, int, int],
    out: tuple[str, int, int],
    datatype: str = "FP32",
    shape: tuple[int, ...] = SHAPE,
    **kwargs: Any,
) -> Any:
    x = mod.InferInput("INPUT0", list(shape), datatype)
    x.set_shared_memory(inp[0], inp[1], offset=inp[2])
    o = mod.InferRequestedOutput("OUTPUT0")
    o.set_shared_memory(out[0], out[1], offset=out[2])
    return client.infer(model, [x], outputs=[o], **kwargs)


def _status(client: Any, kind: str, name: str = "") -> dict[str, dict[str, Any]]:
    """{name: {key, offset, byte_size}} from either client's status answer."""
    if kind == "http":
        return {
            r["name"]: {"key": r["key"], "offset": r["offset"], "byte_size": r["byte_size"]}
            for r in client.get_system_shared_memory_status(name)
        }
    got = client.get_system_shared_memory_status(name)
    return {
        n: {"key": r.key, "offset": r.offset, "byte_size": r.byte_size}
        for n, r in got.regions.items()
    }


@pytest.mark.parametrize("kind", CLIENTS)
def test_register_status_unregister(
    kind: str, http: Any, grpc: Any, segments: list[Segment]
) -> None:
    client, _ = client_for(kind, http, grpc)
    seg = _segment(segments, 256)
    client.register_system_shared_memory(seg.name, seg.key, 128, offset=64)
    assert _status(client, kind)[seg.name] == {"key": seg.key, "offset": 64, "byte_size": 128}
    assert list(_status(client, kind, seg.name)) == [seg.name]
    with pytest.raises(InferenceServerException, match="already registered"):
        client.register_system_shared_memory(seg.name, seg.key, 128)
    client.unregister_system_shared_memory(seg.name)
    assert seg.name not in _status(client, kind)
    with pytest.raises(InferenceServerException, match="no shared-memory region"):
        _status(client, kind, seg.name)
    client.unregister_system_shared_memory(seg.name)  # a missing name is no error


@pytest.mark.parametrize("kind", CLIENTS)
def test_infer_input_and_output_in_shared_memory(
    kind: str, http: Any, grpc: Any, segments: list[Segment]
) -> None:
    client, mod = client_for(kind, http, grpc)
    data = np.arange(8, dtype=np.float32).reshape(SHAPE) + 0.5
    seg_in = _segment(segments, NBYTES)
    seg_out = _segment(segments, NBYTES + 16)
    shm.set_shared_memory_region(seg_in.handle, [data])
    client.register_system_shared_memory(seg_in.name, seg_in.key, NBYTES)
    client.register_system_shared_memory(seg_out.name, seg_out.key, NBYTES + 16)
    try:
        result = _infer_shm(
            client, mod, "identity_fp32", (seg_in.name, NBYTES, 0), (seg_out.name, NBYTES, 16)
        )
        out = result.get_output("OUTPUT0")
        if kind == "http":
            params = out["parameters"]
            assert "data" not in out
        else:
            params = {k: grpcclient_param(v) for k, v in out.parameters.items()}
        assert params["shared_memory_region"] == seg_out.name
        assert params["shared_memory_byte_size"] == NBYTES
        assert params["shared_memory_offset"] == 16
        got = shm.get_contents_as_numpy(seg_out.handle, np.float32, list(SHAPE), offset=16)
        np.testing.assert_array_equal(got, data)
        # Mixed: input in shared memory, output in the answer.
        x = mod.InferInput("INPUT0", list(SHAPE), "FP32")
        x.set_shared_memory(seg_in.name, NBYTES)
        plain = client.infer("identity_fp32", [x])
        np.testing.assert_array_equal(plain.as_numpy("OUTPUT0"), data)
    finally:
        client.unregister_system_shared_memory()


def grpcclient_param(p: Any) -> Any:
    return getattr(p, p.WhichOneof("parameter_choice"))


@pytest.mark.parametrize("kind", CLIENTS)
def test_bytes_tensors_through_shared_memory(
    kind: str, http: Any, grpc: Any, segments: list[Segment]
) -> None:
    client, mod = client_for(kind, http, grpc)
    data = np.array([b"a", b"bc", b"", b"defg"] * 2, dtype=object).reshape(SHAPE)
    from tritonclient.utils import serialize_byte_tensor

    raw = serialize_byte_tensor(data)  # what set_shared_memory_region takes for BYTES
    raw_bytes: bytes = raw.item() if raw.dtype == np.object_ else raw.tobytes()
    size = len(raw_bytes)
    seg_in = _segment(segments, size)
    seg_out = _segment(segments, 256)
    shm.set_shared_memory_region(seg_in.handle, [raw])
    client.register_system_shared_memory(seg_in.name, seg_in.key, size)
    client.register_system_shared_memory(seg_out.name, seg_out.key, 256)
    try:
        result = _infer_shm(
            client, mod, "identity_bytes", (seg_in.name, size, 0), (seg_out.name, 256, 0), "BYTES"
        )
        out = result.get_output("OUTPUT0")
        written = out["parameters"] if kind == "http" else {
            k: grpcclient_param(v) for k, v in out.parameters.items()
        }  # fmt: skip
        got = shm.get_contents_as_numpy(seg_out.handle, np.object_, list(SHAPE))
        assert written["shared_memory_byte_size"] == size
        assert got.reshape(-1).tolist() == data.reshape(-1).tolist()
        # A length prefix claiming more than the span is refused.
        bad = np.frombuffer(raw_bytes, dtype=np.uint8).copy()
        bad[0:4] = np.frombuffer(np.uint32(1 << 30).tobytes(), dtype=np.uint8)
        shm.set_shared_memory_region(seg_in.handle, [bad])
        with pytest.raises(InferenceServerException, match="past the data's end"):
            _infer_shm(
                client,
                mod,
                "identity_bytes",
                (seg_in.name, size, 0),
                (seg_out.name, 256, 0),
                "BYTES",
            )
    finally:
        client.unregister_system_shared_memory()


@pytest.mark.parametrize("kind", CLIENTS)
def test_spans_past_the_segment_are_refused(
    kind: str, http: Any, grpc: Any, segments: list[Segment], server: Server
) -> None:
    client, mod = client_for(kind, http, grpc)
    seg = _segment(segments, NBYTES)
    with pytest.raises(InferenceServerException, match="holds 32 bytes"):
        client.register_system_shared_memory(seg.name, seg.key, NBYTES, offset=8)
    with pytest.raises(InferenceServerException, match="no shared-memory segment"):
        client.register_system_shared_memory(seg.name, "/mptest_missing_segment", NBYTES)
    client.register_system_shared_memory(seg.name, seg.key, NBYTES)
    try:
        # Offset within the region past its end; the tensor's size against byte_size.
        with pytest.raises(InferenceServerException, match="runs past the end"):
            _infer_shm(client, mod, "identity_fp32", (seg.name, NBYTES, 8), (seg.name, NBYTES, 0))
        with pytest.raises(InferenceServerException, match="needs 32 bytes"):
            _infer_shm(client, mod, "identity_fp32", (seg.name, 16, 0), (seg.name, NBYTES, 0))
        with pytest.raises(InferenceServerException, match="no shared-memory region"):
            _infer_shm(client, mod, "identity_fp32", ("nope", NBYTES, 0), (seg.name, NBYTES, 0))
        # An output span too small for the output.
        with pytest.raises(InferenceServerException, match="takes 32 bytes"):
            _infer_shm(client, mod, "identity_fp32", (seg.name, NBYTES, 0), (seg.name, 16, 0))
    finally:
        client.unregister_system_shared_memory()
    assert server.alive()


def test_http_status_codes(server: Server, segments: list[Segment]) -> None:
    seg = _segment(segments, NBYTES)
    base = f"{server.base}/v2/systemsharedmemory"
    r = httpx.post(
        f"{base}/region/{seg.name}/register", json={"key": seg.key, "offset": 8, "byte_size": 32}
    )
    assert r.status_code == 400 and "holds 32 bytes" in r.json()["error"]
    r = httpx.post(f"{base}/region/{seg.name}/register", json={"key": seg.key})
    assert r.status_code == 400
    r = httpx.post(f"{base}/region/x/register", json={"key": seg.key, "byte_size": 1, "bad": 1})
    assert r.status_code == 400 and "unknown field" in r.json()["error"]
    r = httpx.get(f"{base}/region/never/status")
    assert r.status_code == 404
    assert httpx.get(f"{base}/status").json() == []
    meta = httpx.get(f"{server.base}/v2").json()
    assert "system_shared_memory" in meta["extensions"]


@pytest.mark.parametrize("kind", CLIENTS)
def test_truncated_segment_is_a_400_and_the_server_lives(
    kind: str, http: Any, grpc: Any, segments: list[Segment], server: Server
) -> None:
    client, mod = client_for(kind, http, grpc)
    big = 1 << 20
    seg = _segment(segments, big)
    client.register_system_shared_memory(seg.name, seg.key, big)
    try:
        fd = os.open(seg.path, os.O_RDWR)
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)
        shape = (big // 16, 4)
        with pytest.raises(InferenceServerException, match="truncated"):
            _infer_shm(
                client, mod, "identity_fp32", (seg.name, big, 0), (seg.name, big, 0), shape=shape
            )
        # Output span only: checked before inference too.
        x = mod.InferInput("INPUT0", list(SHAPE), "FP32")
        x.set_data_from_numpy(np.zeros(SHAPE, np.float32))
        o = mod.InferRequestedOutput("OUTPUT0")
        o.set_shared_memory(seg.name, NBYTES)
        with pytest.raises(InferenceServerException, match="truncated"):
            client.infer("identity_fp32", [x], outputs=[o])
    finally:
        client.unregister_system_shared_memory()
    assert server.alive()
    assert client.is_server_live()


@pytest.mark.parametrize("kind", CLIENTS)
def test_unregister_while_in_use_is_safe(
    kind: str, http: Any, grpc: Any, segments: list[Segment], server: Server
) -> None:
    """Requests in flight while the region is unregistered and registered again."""
    import concurrent.futures

    client, mod = client_for(kind, http, grpc)
    data = np.full(SHAPE, 3.0, np.float32)
    seg = _segment(segments, 2 * NBYTES)
    shm.set_shared_memory_region(seg.handle, [data])
    client.register_system_shared_memory(seg.name, seg.key, 2 * NBYTES)

    def one(_: int) -> str:
        c = (
            httpclient.InferenceServerClient(server.http_url)
            if kind == "http"
            else grpcclient.InferenceServerClient(server.grpc_url)
        )
        try:
            _infer_shm(c, mod, "identity_fp32", (seg.name, NBYTES, 0), (seg.name, NBYTES, NBYTES))
            return "ok"
        except InferenceServerException as exc:
            assert "no shared-memory region" in str(exc), exc
            return "gone"
        finally:
            c.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(64)]
        for _ in range(10):
            client.unregister_system_shared_memory(seg.name)
            client.register_system_shared_memory(seg.name, seg.key, 2 * NBYTES)
        results = [f.result() for f in futures]
    assert set(results) <= {"ok", "gone"}
    client.unregister_system_shared_memory()
    assert server.alive()


@pytest.mark.parametrize("kind", CLIENTS)
def test_server_keys_and_paths_are_refused(kind: str, http: Any, grpc: Any) -> None:
    client, _ = client_for(kind, http, grpc)
    for key in ("/mport_0123456789abcdef", "mport_x", "/sem.mp-1", "/../etc/passwd", "a/b", ".."):
        with pytest.raises(InferenceServerException) as info:
            client.register_system_shared_memory("bad", key, 16)
        assert "reserved" in str(info.value) or "not a shared-memory segment name" in str(
            info.value
        )


@pytest.mark.parametrize("kind", CLIENTS)
def test_cuda_shared_memory_is_not_supported(kind: str, http: Any, grpc: Any) -> None:
    client, _ = client_for(kind, http, grpc)
    message = "CUDA shared memory is not supported on this server"
    with pytest.raises(InferenceServerException, match=message):
        client.get_cuda_shared_memory_status()
    with pytest.raises(InferenceServerException, match=message):
        client.register_cuda_shared_memory("c", b"\0" * 64, 0, 16)
    with pytest.raises(InferenceServerException, match=message):
        client.unregister_cuda_shared_memory("c")


def test_cuda_routes_answer_400(server: Server) -> None:
    r = httpx.get(f"{server.base}/v2/cudasharedmemory/status")
    assert r.status_code == 400
    assert r.json() == {"error": "CUDA shared memory is not supported on this server"}


# --------------------------------------------------------------- ownership


@pytest.fixture(scope="module")
def auth_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Server, dict[str, str]]]:
    from tests.integration.test_auth import create_key

    root = tmp_path_factory.mktemp("shm-auth")
    repo = root / "repo"
    _save(identity_model("FP32"), repo / "identity_fp32" / "1" / "model.onnx")
    data = root / "data"
    keys = {
        "alice": create_key(data, "--role", "invoker", "--models", "*", "--name", "alice"),
        "bob": create_key(data, "--role", "invoker", "--models", "*", "--name", "bob"),
        "viewer": create_key(data, "--role", "viewer", "--models", "*"),
    }
    srv = start_server(repo, root / "server.log", "--data-dir", str(data))
    yield srv, keys
    stop_server(srv)


def _headers(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_region_belongs_to_who_registered_it(
    kind: str, auth_server: tuple[Server, dict[str, str]], segments: list[Segment]
) -> None:
    server, keys = auth_server
    alice, bob = _headers(keys["alice"]), _headers(keys["bob"])
    if kind == "http":
        client: Any = httpclient.InferenceServerClient(server.http_url)
        mod: Any = httpclient
    else:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        mod = grpcclient
    data = np.ones(SHAPE, np.float32)
    seg = _segment(segments, 2 * NBYTES)
    shm.set_shared_memory_region(seg.handle, [data])
    try:
        client.register_system_shared_memory(seg.name, seg.key, 2 * NBYTES, headers=alice)
        got = client.get_system_shared_memory_status(headers=alice)
        names = [r["name"] for r in got] if kind == "http" else list(got.regions)
        assert names == [seg.name]
        # Bob sees nothing, cannot use it, and unregistering it leaves it registered.
        got = client.get_system_shared_memory_status(headers=bob)
        assert (got == []) if kind == "http" else (len(got.regions) == 0)
        with pytest.raises(InferenceServerException, match="no shared-memory region"):
            client.get_system_shared_memory_status(seg.name, headers=bob)
        with pytest.raises(InferenceServerException, match="no shared-memory region"):
            _infer_shm(
                client,
                mod,
                "identity_fp32",
                (seg.name, NBYTES, 0),
                (seg.name, NBYTES, NBYTES),
                headers=bob,
            )
        client.unregister_system_shared_memory(seg.name, headers=bob)
        client.unregister_system_shared_memory(headers=bob)
        # Nor may bob register alice's segment under a name of his own.
        with pytest.raises(InferenceServerException, match="another caller"):
            client.register_system_shared_memory("mine", seg.key, NBYTES, headers=bob)
        # A viewer may not register at all; no credentials are refused first.
        with pytest.raises(InferenceServerException):
            client.register_system_shared_memory(
                "v", seg.key, NBYTES, headers=_headers(keys["viewer"])
            )
        with pytest.raises(InferenceServerException):
            client.get_system_shared_memory_status()
        # Alice's region still works for alice.
        _infer_shm(
            client,
            mod,
            "identity_fp32",
            (seg.name, NBYTES, 0),
            (seg.name, NBYTES, NBYTES),
            headers=alice,
        )
        out = shm.get_contents_as_numpy(seg.handle, np.float32, list(SHAPE), offset=NBYTES)
        np.testing.assert_array_equal(out, data)
    finally:
        client.unregister_system_shared_memory(headers=alice)
        client.close()


def test_viewer_role_is_403_over_http(
    auth_server: tuple[Server, dict[str, str]],
) -> None:
    server, keys = auth_server
    r = httpx.get(f"{server.base}/v2/systemsharedmemory/status", headers=_headers(keys["viewer"]))
    assert r.status_code == 403
    assert httpx.get(f"{server.base}/v2/systemsharedmemory/status").status_code == 401
