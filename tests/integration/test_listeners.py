"""Ports are bound before models load: a taken one ends the start at once, in one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, start_server, stop_server
from tests.integration.models import _save, identity_model

TRANSPORTS = {"http": "HTTP", "grpc": "gRPC", "metrics": "metrics"}


def _repository(root: Path) -> Path:
    _save(identity_model("FP32"), root / "repo" / "good" / "1" / "model.onnx")
    return root / "repo"


@pytest.mark.parametrize("taken", list(TRANSPORTS))
def test_a_taken_port_stops_the_start_before_models_load(tmp_path: Path, taken: str) -> None:
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        ports = {kind: free_port() for kind in TRANSPORTS}
        ports[taken] = occupant.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
        done = subprocess.run(
            [
                sys.executable, "-m", "modelport", "serve", str(_repository(tmp_path)),
                "--http-port", str(ports["http"]),
                "--grpc-port", str(ports["grpc"]),
                "--metrics-port", str(ports["metrics"]),
                "--data-dir", str(tmp_path / "state"),
            ],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    naming = [line for line in output.splitlines() if str(ports[taken]) in line]
    assert naming == [
        f"error: cannot listen on 127.0.0.1:{ports[taken]} ({TRANSPORTS[taken]}): "
        "address already in use"
    ], output
    assert "Traceback" not in output
    # Nothing was loaded: the port was checked first.
    assert "loading models" not in output
    assert "model version ready" not in output


def test_each_listener_is_logged_before_serving(tmp_path: Path) -> None:
    srv = start_server(_repository(tmp_path), tmp_path / "server.log")
    stop_server(srv)
    messages = [json.loads(line) for line in srv.log().splitlines() if line.startswith('{"time"')]
    order = [m["message"] for m in messages]
    listening = {m["transport"]: m["address"] for m in messages if m["message"] == "listening"}
    assert listening == {
        "HTTP": f"127.0.0.1:{srv.http_port}",
        "gRPC": f"127.0.0.1:{srv.grpc_port}",
        "metrics": f"127.0.0.1:{srv.metrics_port}",
    }
    last_listener = max(i for i, m in enumerate(order) if m == "listening")
    assert last_listener < order.index("loading models") < order.index("serving")
