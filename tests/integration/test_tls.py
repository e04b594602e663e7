"""TLS and mutual TLS against the real server: both transports, rotation, identities.

Certificates are made per module by ``tests.tls_certs``. The server binds
127.0.0.1, so without --tls-identities authentication is off and TLS is
only the transport; with it, client certificates are the identities.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent.ssl
import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from cryptography import x509
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import Server, free_port, stop_server
from tests.integration.models import add_sub_model
from tests.tls_certs import Issued, issue, make_ca

MODEL = "addsub"
BODY = {
    "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16},
    ]
}


class Pki:
    """A CA, the server's pair and client pairs, written under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = make_ca()
        self.ca_path = root / "ca.pem"
        self.ca_path.write_bytes(self.ca.cert_pem)
        self.server = issue(self.ca, "modelport-server", server=True)
        self.cert_path, self.key_path = root / "server.pem", root / "server.key"
        self.server.write(self.cert_path, self.key_path)

    def client(self, cn: str, ca: Issued | None = None) -> tuple[Path, Path]:
        pair = issue(ca or self.ca, cn)
        cert, key = self.root / f"{cn}.pem", self.root / f"{cn}.key"
        pair.write(cert, key)
        return cert, key

    def flags(self) -> list[str]:
        return ["--tls-cert", str(self.cert_path), "--tls-key", str(self.key_path)]


def _repository(root: Path) -> Path:
    (root / MODEL / "1").mkdir(parents=True)
    onnx.save(add_sub_model(), root / MODEL / "1" / "model.onnx")
    (root / MODEL / "config.yaml").write_text("max_batch_size: 8\n")
    return root


def _client_context(ca: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def _start(repo: Path, log_path: Path, ready_ctx: ssl.SSLContext, *extra: str) -> Server:
    """Like conftest.start_server, with readiness polled over HTTPS."""
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    args = [
        sys.executable, "-m", "modelport", "serve", str(repo),
        "--http-port", str(http_port), "--grpc-port", str(grpc_port),
        "--metrics-port", str(metrics_port),
        "--data-dir", str(log_path.parent / f"state-{http_port}"),
        *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    proc = subprocess.Popen(args, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, env=env)
    server = Server(proc, http_port, grpc_port, metrics_port, repo, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            url = f"https://127.0.0.1:{http_port}/v2/health/ready"
            if httpx.get(url, verify=ready_ctx, timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"server not ready in time:\n{server.log()}")


def _serial(port: int, ca: Path, cert: tuple[Path, Path] | None = None) -> int:
    """The serial number of the certificate a new connection to ``port`` is shown."""
    ctx = _client_context(ca, cert)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _inputs(mod: Any) -> list[Any]:
    a = np.ones((1, 16), dtype=np.float32)
    inputs = [mod.InferInput("INPUT0", [1, 16], "FP32"), mod.InferInput("INPUT1", [1, 16], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    return inputs


# --- TLS without client certificates -------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def tls_server(pki: Pki, repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("tls") / "server.log"
    srv = _start(repo, log, _client_context(pki.ca_path), *pki.flags())
    yield srv
    stop_server(srv)


def test_https_on_rest_and_metrics_ports(tls_server: Server, pki: Pki) -> None:
    ctx = _client_context(pki.ca_path)
    base = f"https://127.0.0.1:{tls_server.http_port}"
    assert httpx.post(f"{base}/v2/models/{MODEL}/infer", json=BODY, verify=ctx).status_code == 200
    metrics = httpx.get(f"https://127.0.0.1:{tls_server.metrics_port}/metrics", verify=ctx)
    assert metrics.status_code == 200


def test_plain_http_to_the_tls_port_fails(tls_server: Server) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls_server.http_port}/v2/health/ready", timeout=5)


def test_tls_1_1_is_refused(tls_server: Server, pki: Pki) -> None:
    ctx = _client_context(pki.ca_path)
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, OSError)):
        _serial_with(ctx, tls_server.http_port)


def _serial_with(ctx: ssl.SSLContext, port: int) -> None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        pass


def test_tritonclient_http_over_tls(tls_server: Server, pki: Pki) -> None:
    client = httpclient.InferenceServerClient(
        tls_server.http_url,
        ssl=True,
        ssl_context_factory=lambda: gevent.ssl.create_default_context(cafile=str(pki.ca_path)),
    )
    try:
        result = client.infer(MODEL, _inputs(httpclient))
        assert result.as_numpy("OUTPUT0") is not None
    finally:
        client.close()


def test_tritonclient_grpc_over_tls(tls_server: Server, pki: Pki) -> None:
    client = grpcclient.InferenceServerClient(
        tls_server.grpc_url, ssl=True, root_certificates=str(pki.ca_path)
    )
    try:
        assert client.is_server_live()
        assert client.infer(MODEL, _inputs(grpcclient)).as_numpy("OUTPUT0") is not None
    finally:
        client.close()


def test_plaintext_grpc_to_the_tls_port_fails(tls_server: Server) -> None:
    client = grpcclient.InferenceServerClient(tls_server.grpc_url)
    try:
        with pytest.raises(InferenceServerException):
            client.is_server_live(client_timeout=5)
    finally:
        client.close()


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("mismatch", "does not belong to the certificate"),
        ("expired", "expired"),
        ("missing", "cannot read"),
    ],
)
def test_bad_tls_files_stop_the_server_with_exit_2(
    pki: Pki, tmp_path: Path, problem: str, message: str
) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    if problem == "mismatch":
        cert.write_bytes(pki.server.cert_pem)
        key.write_bytes(issue(pki.ca, "other", server=True).key_pem)
    elif problem == "expired":
        issue(pki.ca, "old", server=True, expired=True).write(cert, key)
    else:
        key.write_bytes(pki.server.key_pem)
    done = subprocess.run(
        [sys.executable, "-m", "modelport", "serve", "--tls-cert", str(cert), "--tls-key",
         str(key), "--data-dir", str(tmp_path / "state"), "--http-port", str(free_port()),
         "--grpc-port", str(free_port()), "--metrics-port", str(free_port())],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert str(key if problem == "mismatch" else cert) in done.stderr
    assert "Traceback" not in done.stderr


# --- mutual TLS ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtls(
    pki: Pki, repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, dict[str, tuple[Path, Path]]]]:
    root = tmp_path_factory.mktemp("mtls")
    clients = {cn: pki.client(cn) for cn in ("scorer", "watcher", "stranger")}
    clients["foreign"] = pki.client("foreign", make_ca("another CA"))
    identities = root / "identities.yaml"
    identities.write_text(
        "identities:\n"
        "  - cn: scorer\n    role: invoker\n    models: ['add*']\n"
        "  - subject: CN=watcher\n    role: viewer\n    models: ['*']\n"
    )
    ready = _client_context(pki.ca_path, clients["scorer"])
    flags = [*pki.flags(), "--tls-client-ca", str(pki.ca_path), "--tls-identities", str(identities)]
    srv = _start(repo, root / "server.log", ready, *flags)
    yield srv, clients
    stop_server(srv)


def _https(srv: Server, ca: Path, cert: tuple[Path, Path] | None) -> httpx.Client:
    return httpx.Client(
        base_url=f"https://127.0.0.1:{srv.http_port}", verify=_client_context(ca, cert), timeout=5
    )


def test_mtls_without_a_client_certificate_is_refused_at_handshake(
    mtls: tuple[Server, dict[str, tuple[Path, Path]]], pki: Pki
) -> None:
    srv, _ = mtls
    with _https(srv, pki.ca_path, None) as client, pytest.raises(httpx.TransportError):
        client.get("/v2/health/ready")


def test_mtls_certificate_from_another_ca_is_refused(
    mtls: tuple[Server, dict[str, tuple[Path, Path]]], pki: Pki
) -> None:
    srv, clients = mtls
    with (
        _https(srv, pki.ca_path, clients["foreign"]) as client,
        pytest.raises(httpx.TransportError),
    ):
        client.get("/v2/health/ready")


def test_mtls_identities_get_their_roles_over_http(
    mtls: tuple[Server, dict[str, tuple[Path, Path]]], pki: Pki
) -> None:
    srv, clients = mtls
    with _https(srv, pki.ca_path, clients["scorer"]) as scorer:
        assert scorer.post(f"/v2/models/{MODEL}/infer", json=BODY).status_code == 200
        assert scorer.post(f"/v2/repository/models/{MODEL}/load").status_code == 403
    with _https(srv, pki.ca_path, clients["watcher"]) as watcher:
        assert watcher.get(f"/v2/models/{MODEL}").status_code == 200
        assert watcher.post(f"/v2/models/{MODEL}/infer", json=BODY).status_code == 403
    with _https(srv, pki.ca_path, clients["stranger"]) as stranger:
        assert stranger.get("/v2/health/ready").status_code == 200
        denied = stranger.get(f"/v2/models/{MODEL}")
        assert denied.status_code == 403
        assert "permission denied" in denied.json()["error"]


def test_a_bad_bearer_token_wins_over_a_good_certificate(
    mtls: tuple[Server, dict[str, tuple[Path, Path]]], pki: Pki
) -> None:
    srv, clients = mtls
    with _https(srv, pki.ca_path, clients["scorer"]) as scorer:
        answer = scorer.post(
            f"/v2/models/{MODEL}/infer", json=BODY, headers={"Authorization": "Bearer mpk_x_y"}
        )
    assert answer.status_code == 401


def _grpc(srv: Server, pki: Pki, cert: tuple[Path, Path] | None) -> Any:
    return grpcclient.InferenceServerClient(
        srv.grpc_url,
        ssl=True,
        root_certificates=str(pki.ca_path),
        private_key=str(cert[1]) if cert else None,
        certificate_chain=str(cert[0]) if cert else None,
    )


def test_mtls_identities_get_their_roles_over_grpc(
    mtls: tuple[Server, dict[str, tuple[Path, Path]]], pki: Pki
) -> None:
    srv, clients = mtls
    scorer = _grpc(srv, pki, clients["scorer"])
    stranger = _grpc(srv, pki, clients["stranger"])
    anonymous = _grpc(srv, pki, None)
    try:
        assert scorer.infer(MODEL, _inputs(grpcclient)).as_numpy("OUTPUT0") is not None
        assert stranger.is_server_live()
        with pytest.raises(InferenceServerException) as denied:
            stranger.infer(MODEL, _inputs(grpcclient))
        assert denied.value.status() == "StatusCode.PERMISSION_DENIED"
        with pytest.raises(InferenceServerException) as refused:
            anonymous.is_server_live(client_timeout=5)
        assert refused.value.status() in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
    finally:
        for c in (scorer, stranger, anonymous):
            c.close()


# --- rotation ------------------------------------------------------------------------------


class _Traffic(threading.Thread):
    """Requests on new connections, back to back, until stopped; counts failures."""

    def __init__(self, port: int, ca: Path) -> None:
        super().__init__(daemon=True)
        self.port, self.ca = port, ca
        self.ok = 0
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                with httpx.Client(verify=_client_context(self.ca), timeout=5) as c:
                    answer = c.get(f"https://127.0.0.1:{self.port}/v2/health/ready")
                if answer.status_code == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"status {answer.status_code}")
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))


def _wait_for(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_rotation_serves_the_new_certificate_without_dropping_anything(
    repo: Path, tmp_path: Path
) -> None:
    pki = Pki(tmp_path)
    # A CA bundle trusting both the old and the new issuer, for the clients.
    new_ca = make_ca("rotated CA")
    both = tmp_path / "both.pem"
    both.write_bytes(pki.ca.cert_pem + new_ca.cert_pem)
    only_new = tmp_path / "new-ca.pem"
    only_new.write_bytes(new_ca.cert_pem)
    srv = _start(
        repo, tmp_path / "server.log", _client_context(both), *pki.flags(),
        "--tls-reload-interval", "0.2",
    )  # fmt: skip
    traffic = _Traffic(srv.http_port, both)
    try:
        old_serial = pki.server.serial
        assert _serial(srv.http_port, both) == old_serial
        # A keep-alive connection opened before the rotation.
        keep = http.client.HTTPSConnection(
            "127.0.0.1", srv.http_port, context=_client_context(both), timeout=5
        )
        keep.request("GET", "/v2/health/live")
        assert keep.getresponse().read() is not None
        traffic.start()
        _wait_for(lambda: traffic.ok > 0, "background traffic")

        rotated = issue(new_ca, "modelport-server", server=True)
        for data, path in ((rotated.key_pem, pki.key_path), (rotated.cert_pem, pki.cert_path)):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        _wait_for(lambda: _serial(srv.http_port, both) == rotated.serial, "the new certificate")
        assert _serial(srv.metrics_port, both) == rotated.serial
        assert "tls certificate reloaded" in srv.log()

        # The old connection still answers, still with the old certificate.
        keep.request("GET", "/v2/health/live")
        assert keep.getresponse().status == 200
        assert keep.sock is not None
        der = keep.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        assert x509.load_der_x509_certificate(der).serial_number == old_serial
        keep.close()

        # gRPC: a client trusting only the new CA gets in now.
        grpc = grpcclient.InferenceServerClient(
            srv.grpc_url, ssl=True, root_certificates=str(only_new)
        )
        try:
            assert grpc.is_server_live()
        finally:
            grpc.close()

        # A broken pair (a key that does not match) is refused; the rotated one serves on.
        pki.key_path.write_bytes(issue(new_ca, "stray", server=True).key_pem)
        pki.cert_path.write_bytes(issue(new_ca, "modelport-server", server=True).cert_pem)
        _wait_for(lambda: "tls reload failed" in srv.log(), "the failed reload")
        assert _serial(srv.http_port, both) == rotated.serial

        traffic.halt.set()
        traffic.join(10)
        assert traffic.failures == []
        assert traffic.ok > 0
        assert srv.alive()
    finally:
        traffic.halt.set()
        stop_server(srv)


def test_sighup_reloads_at_once(repo: Path, tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    srv = _start(
        repo, tmp_path / "server.log", _client_context(pki.ca_path), *pki.flags(),
        "--tls-reload-interval", "3600",
    )  # fmt: skip
    try:
        rotated = issue(pki.ca, "modelport-server", server=True)
        rotated.write(pki.cert_path, pki.key_path)
        srv.process.send_signal(1)  # SIGHUP
        _wait_for(
            lambda: _serial(srv.http_port, pki.ca_path) == rotated.serial, "the SIGHUP reload"
        )
    finally:
        stop_server(srv)


#: A TLS record header announcing a 512-byte handshake message, and its first byte.
PARTIAL_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01"
HANDSHAKE_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def quick_handshakes(
    pki: Pki, repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    logs = tmp_path_factory.mktemp("tls-handshake")
    config = logs / "server.yaml"
    config.write_text(f"header_timeout: {HANDSHAKE_TIMEOUT_S}\n")
    srv = _start(
        repo, logs / "server.log", _client_context(pki.ca_path), *pki.flags(),
        "--config", str(config),
    )  # fmt: skip
    yield srv
    stop_server(srv)


@pytest.mark.parametrize("sent", [b"", PARTIAL_CLIENT_HELLO], ids=["nothing", "partial-hello"])
@pytest.mark.parametrize("port", ["http", "metrics", "grpc"])
def test_a_stalled_handshake_is_cut_off_after_header_timeout(
    quick_handshakes: Server, pki: Pki, port: str, sent: bytes
) -> None:
    """A client that opens a TLS connection and stalls is let go after header_timeout."""
    number = {
        "http": quick_handshakes.http_port,
        "metrics": quick_handshakes.metrics_port,
        "grpc": quick_handshakes.grpc_port,
    }[port]
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", number), timeout=30) as sock:
        sock.sendall(sent)
        try:
            while sock.recv(4096):
                pass
        except ConnectionResetError:
            pass
    took = time.monotonic() - started
    assert HANDSHAKE_TIMEOUT_S * 0.5 <= took < HANDSHAKE_TIMEOUT_S + 3, took
    # A client that completes its handshake is still served.
    assert _serial(number, pki.ca_path) == pki.server.serial
