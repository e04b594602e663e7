"""Triton's logging extension against the real server: read, changed and refused over
REST (/v2/logging) and gRPC (LogSettings, through tritonclient.grpc).

The server's stderr goes to a file (no terminal), so its log starts as JSON lines.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc as grpc_module
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

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


def _settings(response: Any) -> dict[str, Any]:
    """A LogSettingsResponse as REST's dictionary: each setting's value, whatever its kind."""
    return {
        name: getattr(value, value.WhichOneof("parameter_choice"))
        for name, value in response.settings.items()
    }


def _grpc_refusal(client: grpcclient.InferenceServerClient, **kwargs: Any) -> Any:
    with pytest.raises(InferenceServerException) as refused:
        client.update_log_settings(**kwargs)
    return refused.value


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


@pytest.fixture
def grpc(server: Server) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


def test_grpc_reads_tritons_settings(grpc: grpcclient.InferenceServerClient) -> None:
    assert _settings(grpc.get_log_settings()) == DEFAULTS
    as_json = grpc.get_log_settings(as_json=True)["settings"]
    assert as_json["log_info"] == {"bool_param": True}
    assert as_json["log_format"] == {"string_param": "json"}
    assert "logging" in grpc.get_server_metadata(as_json=True)["extensions"]


def test_grpc_changes_what_it_names_and_rest_sees_it(
    server: Server, grpc: grpcclient.InferenceServerClient
) -> None:
    changed = grpc.update_log_settings({"log_warnings": False, "log_format": "text"})
    assert _settings(changed) == {**DEFAULTS, "log_warnings": False, "log_format": "text"}
    assert _settings(grpc.get_log_settings()) == _settings(changed)
    assert httpx.get(f"{server.base}/v2/logging").json() == _settings(changed)
    # What REST changes, gRPC reads.
    assert _post(server, {"log_format": "json"}).status_code == 200
    assert _settings(grpc.get_log_settings())["log_format"] == "json"


def test_a_verbose_level_set_over_grpc_turns_on_debug_lines(
    server: Server, grpc: grpcclient.InferenceServerClient
) -> None:
    assert _settings(grpc.update_log_settings({"log_verbose_level": 1}))["log_verbose_level"] == 1
    mark = len(server.log())
    _infer(server)
    assert _written_after(server, mark, '"message": "inference"')


@pytest.mark.parametrize(
    "settings",
    [
        {"log_warning": True},
        {"log_format": "xml"},
        {"log_info": None},
    ],
)
def test_a_bad_grpc_change_is_invalid_with_rests_message(
    server: Server, grpc: grpcclient.InferenceServerClient, settings: dict[str, Any]
) -> None:
    refused = _grpc_refusal(grpc, settings={"log_info": False, **settings})
    assert refused.status() == "StatusCode.INVALID_ARGUMENT"
    # A setting without a value is REST's null.
    assert refused.message() == _post(server, settings).json()["error"]
    assert _settings(grpc.get_log_settings()) == DEFAULTS


def test_a_value_of_the_wrong_kind_is_refused_over_grpc_as_over_rest(server: Server) -> None:
    """tritonclient picks each value's kind by the setting's name; another client may not."""
    request = service_pb2.LogSettingsRequest()
    request.settings["log_verbose_level"].bool_param = True
    with grpc_module.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc_module.RpcError) as refused:
            stub.LogSettings(request)
    assert refused.value.code() == grpc_module.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == _post(server, {"log_verbose_level": True}).json()["error"]


def test_log_file_is_refused_over_grpc_and_no_file_is_made(
    grpc: grpcclient.InferenceServerClient, tmp_path: Path
) -> None:
    target = tmp_path / "chosen.log"
    refused = _grpc_refusal(grpc, settings={"log_file": str(target), "log_info": False})
    assert refused.status() == "StatusCode.INVALID_ARGUMENT"
    assert "a caller may not choose a file" in refused.message()
    assert not target.exists()
    assert _settings(grpc.get_log_settings())["log_info"] is True


def test_over_grpc_reading_needs_a_viewer_and_changing_an_operator_and_is_audited(
    guarded: tuple[Server, dict[str, str]],
) -> None:
    server, keys = guarded

    def auth(name: str) -> dict[str, str]:
        return {"authorization": f"Bearer {keys[name]}"}

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as anonymous:
            client.get_log_settings()
        assert anonymous.value.status() == "StatusCode.UNAUTHENTICATED"
        before = _settings(client.get_log_settings(headers=auth("viewer")))
        denied = _grpc_refusal(client, settings={"log_errors": False}, headers=auth("viewer"))
        assert denied.status() == "StatusCode.PERMISSION_DENIED"
        assert _settings(client.get_log_settings(headers=auth("viewer"))) == before
        done = client.update_log_settings({"log_verbose_level": 3}, headers=auth("ops"))
        assert _settings(done) == {**before, "log_verbose_level": 3}
    finally:
        client.close()
    history = httpx.get(f"{server.base}/api/v1/history", headers=bearer(keys["admin"])).json()
    changes = [e for e in history["events"] if e["action"] == "logging.update"]
    assert changes, history
    assert changes[0]["actor"] == "ops-bot"
    assert changes[0]["model"] == "*"
    assert changes[0]["detail"] == {"log_verbose_level": 3}
