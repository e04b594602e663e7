"""What /api/v1 accepts: JSON bodies only, If-Match before the body, a self-contained OpenAPI.

Raw httpx against a real server, plus the traffic-policy command of
docs/management-api.md run with curl exactly as the page prints it (only the
address changed to the test server's).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "management-api.md"

CONFIG = """
backend: python
max_batch_size: 0
input:
- {name: x, data_type: TYPE_FP32, dims: [1]}
output:
- {name: y, data_type: TYPE_FP32, dims: [1]}
"""

MODEL = """
class Model:
    def predict(self, inputs):
        return {"y": inputs["x"]}
"""

GOOD_POLICY = {"routes": [{"version": "1", "weight": 100}]}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("requests-repo")
    for name in ("fraud", "other"):
        (root / name).mkdir()
        (root / name / "config.yaml").write_text(CONFIG)
        for version in (1, 2, 3):
            (root / name / str(version)).mkdir()
            (root / name / str(version) / "model.py").write_text(textwrap.dedent(MODEL))
    server = start_server(root, tmp_path_factory.mktemp("requests-logs") / "server.log")
    yield server
    stop_server(server)


def api(server: Server) -> str:
    return f"{server.base}/api/v1"


def assert_api_error(r: httpx.Response, status: int, code: str, *words: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code, body
    for word in words:
        assert word in body["error"], body


@pytest.mark.parametrize(
    ("method", "path", "headers", "content"),
    [
        pytest.param(
            "PUT",
            "/models/other/traffic",
            {"If-Match": "0", "Content-Type": "application/x-www-form-urlencoded"},
            b'{"routes": [{"version": "1", "weight": 100}]}',
            id="traffic-form",
        ),
        pytest.param(
            "PUT",
            "/models/other/traffic",
            {"If-Match": "0"},
            b'{"routes": [{"version": "1", "weight": 100}]}',
            id="traffic-no-content-type",
        ),
        pytest.param(
            "POST",
            "/models/other/canary",
            {"Content-Type": "text/plain"},
            b'{"version": "2"}',
            id="canary-text",
        ),
        pytest.param(
            "POST",
            "/models/other/versions/1/load",
            {"Content-Type": "multipart/form-data; boundary=x"},
            b"--x--",
            id="load-multipart",
        ),
    ],
)
def test_a_body_that_is_not_json_is_415(
    srv: Server, method: str, path: str, headers: dict[str, str], content: bytes
) -> None:
    r = httpx.request(method, f"{api(srv)}{path}", headers=headers, content=content)
    assert_api_error(r, 415, "unsupported_media_type", "application/json")
    assert httpx.get(f"{api(srv)}/models/other/traffic").json()["revision"] == 0


def test_json_media_types_with_parameters_are_accepted(srv: Server) -> None:
    url = f"{api(srv)}/models/other/traffic"
    headers = {"If-Match": "0", "Content-Type": "application/json; charset=utf-8"}
    r = httpx.put(url, headers=headers, content=b'{"routes": [{"version": 1, "weight": 100}]}')
    assert r.status_code == 200, r.text
    revision = r.json()["revision"]
    r = httpx.delete(url, headers={"If-Match": str(revision)})
    assert r.status_code == 204, r.text


@pytest.mark.parametrize(
    ("headers", "content"),
    [
        pytest.param({"Content-Type": "application/json"}, b"{not json", id="bad-json"),
        pytest.param({"Content-Type": "application/json"}, b'{"routes": 7}', id="bad-field"),
        pytest.param({"Content-Type": "application/x-www-form-urlencoded"}, b"a=b", id="form"),
        pytest.param({}, b"", id="no-body"),
    ],
)
def test_a_change_without_if_match_is_428_whatever_the_body(
    srv: Server, headers: dict[str, str], content: bytes
) -> None:
    r = httpx.put(f"{api(srv)}/models/other/traffic", headers=headers, content=content)
    assert_api_error(r, 428, "precondition_required", "If-Match")


def test_a_delete_without_if_match_is_428(srv: Server) -> None:
    r = httpx.delete(f"{api(srv)}/models/other/traffic")
    assert_api_error(r, 428, "precondition_required", "If-Match")


def test_malformed_json_is_400_saying_so(srv: Server) -> None:
    r = httpx.put(
        f"{api(srv)}/models/other/traffic",
        headers={"If-Match": "0", "Content-Type": "application/json"},
        content=b"{not json",
    )
    assert_api_error(r, 400, "invalid_request", "not valid JSON")


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def _body_schema(doc: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    body = doc["paths"][path][method]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    while "$ref" in schema:
        schema = _resolve(doc, schema["$ref"])
    assert isinstance(schema, dict)
    return schema


def test_openapi_refs_resolve_and_bodies_are_described_field_by_field(srv: Server) -> None:
    doc = httpx.get(f"{api(srv)}/openapi.json").json()
    refs = set(_refs(doc))
    assert refs
    for ref in refs:
        _resolve(doc, ref)

    traffic = _body_schema(doc, "/models/{model}/traffic", "put")
    assert {"routes", "sticky_key", "shadow", "reason"} <= set(traffic["properties"])
    assert traffic["required"] == ["routes"]
    assert traffic.get("additionalProperties") is False
    route = _resolve(doc, traffic["properties"]["routes"]["items"]["$ref"])
    assert set(route["properties"]) == {"version", "weight"}
    assert route["properties"]["weight"]["maximum"] == 100

    canary = _body_schema(doc, "/models/{model}/canary", "post")
    assert {"version", "steps", "interval_s", "slo", "min_requests", "stable"} <= set(
        canary["properties"]
    )
    assert "version" in canary["required"]
    slo = _resolve(doc, canary["properties"]["slo"]["$ref"])
    assert {"max_error_rate", "max_p99_ms", "min_agreement"} <= set(slo["properties"])

    put = doc["paths"]["/models/{model}/traffic"]["put"]
    assert "428" in put["responses"] and "415" in put["responses"]
    assert any(p["name"] == "if-match" for p in put["parameters"])


def _documented_curl() -> str:
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    found = [b for b in blocks if b.startswith("curl -X PUT") and "/traffic" in b]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_documented_curl_sets_the_policy(srv: Server) -> None:
    command = _documented_curl().replace("localhost:8000", f"127.0.0.1:{srv.http_port}")
    # The shell runs it as printed (quotes, line continuations); curl fails on a 4xx.
    strict = 'curl() { command curl --silent --show-error --fail-with-body "$@"; }\n'
    done = subprocess.run(
        ["bash", "-c", strict + command], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    state = httpx.get(f"{api(srv)}/models/fraud/traffic").json()
    assert state["revision"] == 1
    assert state["policy"]["sticky_key"] == "X-User-Id"
    assert state["policy"]["shadow"] == {"version": "3", "fraction": 0.2}
