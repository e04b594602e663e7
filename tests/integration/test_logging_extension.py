"""Triton's logging extension against the real server: /v2/logging read, changed, refused.

The server's stderr goes to a file (no terminal), so its log starts as JSON lines.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.integration.conftest import Server, start_server, stop_server
from tests.integration.models import _save, identity_model
from tests.integration.test_auth import bearer, create_key

DEFAULTS = {
    "log_file": "",
    "log_info": True,
    "log_warnings": True,
    "log_errors": True,
    "log_verbose_level": 0,
    "log_format": "json",
}


def _repository(root: Path) -> Path:
    _save(identity_model("FP32"), root / "repo" / "ident" / "1" / "model.onnx")
    (root / "repo" / "ident" / "config.yaml").write_text("max_batch_size: 8\n")
    return root / "repo"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("logging")
    srv = start_server(_repository(root), root / "server.log")
    yield srv
    stop_server(srv)


@pytest.fixture(autouse=True)
def defaults(server: Server) -> Iterator[None]:
    """Every test starts and ends with the settings the server started with."""
    yield
    got = httpx.post(f"{server.base}/v2/logging", json=DEFAULTS)
    assert got.status_code == 200, got.text


def _post(server: Server, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.base}/v2/logging", json=body, **kwargs)


def _infer(server: Server) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    client.infer("ident", [tensor])
    client.close()


def _written_after(server: Server, mark: int, text: str) -> bool:
    """Whether ``text`` appears in the log past byte ``mark`` (given a moment to arrive)."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if text in server.log()[mark:]:
            return True
        time.sleep(0.05)
    return False


def test_get_answers_tritons_settings(server: Server) -> None:
    got = httpx.get(f"{server.base}/v2/logging")
    assert got.status_code == 200
    assert got.json() == DEFAULTS


def test_post_changes_what_it_names_and_answers_every_setting(server: Server) -> None:
    got = _post(server, {"log_verbose_level": 1, "log_warnings": False})
    assert got.status_code == 200
    assert got.json() == {**DEFAULTS, "log_verbose_level": 1, "log_warnings": False}
    assert httpx.get(f"{server.base}/v2/logging").json() == got.json()


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"log_file": "/tmp/modelport.log"}, "log_file"),
        ({"log_warning": True}, "log_warning"),
        ({"log_info": "yes"}, "log_info"),
        ({"log_verbose_level": -1}, "log_verbose_level"),
        ({"log_verbose_level": True}, "log_verbose_level"),
        ({"log_format": "xml"}, "log_format"),
        ([{"log_info": False}], "JSON object"),
    ],
)
def test_a_bad_change_is_refused_with_400_naming_the_field(
    server: Server, body: Any, names: str
) -> None:
    got = _post(server, body)
    assert got.status_code == 400, got.text
    assert names in got.json()["error"]
    assert httpx.get(f"{server.base}/v2/logging").json() == DEFAULTS


def test_log_file_is_refused_and_no_file_is_made(server: Server, tmp_path: Path) -> None:
    target = tmp_path / "chosen.log"
    got = _post(server, {"log_file": str(target), "log_info": False})
    assert got.status_code == 400
    assert "a caller may not choose a file" in got.json()["error"]
    assert not target.exists()
    # The rest of the refused request did not take effect either.
    assert httpx.get(f"{server.base}/v2/logging").json()["log_info"] is True


def test_a_body_over_the_management_limit_is_refused(server: Server) -> None:
    got = httpx.post(
        f"{server.base}/v2/logging",
        content=b'{"log_info": true, "pad": "' + b"x" * (2 << 20) + b'"}',
    )
    assert got.status_code == 413, got.text


def test_turning_info_off_stops_info_lines(server: Server) -> None:
    load = f"{server.base}/v2/repository/models/ident/load"
    assert _post(server, {"log_info": False}).status_code == 200
    mark = len(server.log())
    assert httpx.post(load).status_code == 200
    assert not _written_after(server, mark, '"message": "model version ready"')
    assert _post(server, {"log_info": True}).status_code == 200
    mark = len(server.log())
    assert httpx.post(load).status_code == 200
    assert _written_after(server, mark, '"message": "model version ready"')


def test_a_verbose_level_turns_on_debug_lines(server: Server) -> None:
    mark = len(server.log())
    _infer(server)
    assert not _written_after(server, mark, '"message": "inference"')
    assert _post(server, {"log_verbose_level": 1}).status_code == 200
    mark = len(server.log())
    _infer(server)
    assert _written_after(server, mark, '"message": "inference"')


def test_the_format_changes_at_run_time(server: Server) -> None:
    mark = len(server.log())
    assert _post(server, {"log_format": "text"}).json()["log_format"] == "text"
    assert _written_after(server, mark, 'modelport.logs log settings changed changed={"log_format"')
    assert _post(server, {"log_format": "json"}).status_code == 200


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    root = tmp_path_factory.mktemp("logging-auth")
    data = root / "data"
    keys = {
        "admin": create_key(data, "--role", "admin", "--models", "*", "--name", "root"),
        "viewer": create_key(data, "--role", "viewer", "--models", "*"),
        "ops": create_key(data, "--role", "operator", "--models", "*", "--name", "ops-bot"),
    }
    srv = start_server(_repository(root), root / "server.log", "--data-dir", str(data))
    yield srv, keys
    stop_server(srv)


def test_reading_needs_a_viewer_and_changing_an_operator(
    guarded: tuple[Server, dict[str, str]],
) -> None:
    server, keys = guarded
    url = f"{server.base}/v2/logging"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers=bearer(keys["viewer"])).json() == DEFAULTS
    denied = httpx.post(url, json={"log_verbose_level": 1}, headers=bearer(keys["viewer"]))
    assert denied.status_code == 403
    assert httpx.get(url, headers=bearer(keys["viewer"])).json()["log_verbose_level"] == 0
    done = httpx.post(url, json={"log_verbose_level": 1}, headers=bearer(keys["ops"]))
    assert done.status_code == 200
    assert done.json()["log_verbose_level"] == 1


def test_a_change_is_in_the_audit_log(guarded: tuple[Server, dict[str, str]]) -> None:
    server, keys = guarded
    url = f"{server.base}/v2/logging"
    assert httpx.post(url, json={"log_warnings": True}, headers=bearer(keys["ops"])).is_success
    history = httpx.get(f"{server.base}/api/v1/history", headers=bearer(keys["admin"])).json()
    changes = [e for e in history["events"] if e["action"] == "logging.update"]
    assert changes, history
    assert changes[0]["actor"] == "ops-bot"
    assert changes[0]["model"] == "*"
    assert changes[0]["detail"] == {"log_warnings": True}
