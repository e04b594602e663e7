"""The server's stderr: text or JSON lines, one per listener, and no library chatter."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.integration.conftest import Server, free_port, start_server, stop_server
from tests.integration.models import _save, identity_model

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) +"
    r"(?P<logger>\S+) (?P<rest>\S.*)$"
)


def _rest(line: str) -> str:
    """A text line's message and extras."""
    found = TEXT_LINE.match(line)
    assert found is not None, line
    return found["rest"]


#: What libraries say while the server starts and stops, none of it modelport's.
CHATTER = (
    "Started server process",
    "Uvicorn running",
    "Context impl",
    "Will assume",
    "Running upgrade",
    "setup plugin",
    "Shutting down",
    "Finished server process",
)


def _repository(root: Path) -> Path:
    _save(identity_model("FP32"), root / "repo" / "ident" / "1" / "model.onnx")
    return root / "repo"


def _started_and_stopped(tmp_path: Path, *flags: str) -> tuple[Server, list[str]]:
    srv = start_server(_repository(tmp_path), tmp_path / "server.log", *flags)
    stop_server(srv)
    return srv, [line for line in srv.log().splitlines() if line.strip()]


def _listening(srv: Server) -> dict[str, str]:
    return {
        "HTTP": f"127.0.0.1:{srv.http_port}",
        "gRPC": f"127.0.0.1:{srv.grpc_port}",
        "metrics": f"127.0.0.1:{srv.metrics_port}",
    }


def test_text_is_one_readable_line_per_record(tmp_path: Path) -> None:
    srv, lines = _started_and_stopped(tmp_path, "--log-format", "text")
    assert lines, "the server wrote nothing"
    assert [line for line in lines if not TEXT_LINE.match(line)] == []
    listening = [_rest(line) for line in lines if " listening " in line]
    assert listening == [
        f"listening transport={transport} address={address}"
        for transport, address in _listening(srv).items()
    ]
    assert any(
        _rest(line).startswith("serving host=127.0.0.1 ") and ' models=["ident"]' in line
        for line in lines
    )
    assert [line for line in lines if any(c in line for c in CHATTER)] == []


def test_json_is_one_object_per_line_and_only_modelports_own(tmp_path: Path) -> None:
    srv, lines = _started_and_stopped(tmp_path, "--log-format", "json")
    records = [json.loads(line) for line in lines]
    assert {r["logger"].split(".")[0] for r in records} == {"modelport"}
    listening = [(r["transport"], r["address"]) for r in records if r["message"] == "listening"]
    assert listening == list(_listening(srv).items())
    messages = [r["message"] for r in records]
    assert messages.index("listening") < messages.index("loading models")
    assert messages[-1] == "stopped"


def test_auto_is_json_when_stderr_is_no_terminal(tmp_path: Path) -> None:
    _, lines = _started_and_stopped(tmp_path)
    assert all(json.loads(line)["logger"].startswith("modelport") for line in lines)


def test_auto_is_text_on_a_terminal(tmp_path: Path) -> None:
    main, terminal = pty.openpty()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    process = subprocess.Popen(
        [
            sys.executable, "-m", "modelport", "serve", str(_repository(tmp_path)),
            "--http-port", str(port), "--grpc-port", str(free_port()),
            "--metrics-port", str(free_port()), "--data-dir", str(tmp_path / "state"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env=env,
    )  # fmt: skip
    os.close(terminal)
    written = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the other end closed
                return
            if not chunk:
                return
            written.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while b" serving " not in written and time.monotonic() < deadline:
            assert process.poll() is None, written.decode(errors="replace")
            time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/v2/logging").json()["log_format"] == "text"
    finally:
        process.terminate()
        process.wait(timeout=30)
        reader.join(timeout=5)
        os.close(main)
    lines = [line for line in written.decode(errors="replace").splitlines() if line.strip()]
    assert lines and all(TEXT_LINE.match(line) for line in lines), lines
