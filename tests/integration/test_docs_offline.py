"""``/docs`` works without the internet, and ``/openapi.json`` describes what the server does.

The page is loaded by headless Chromium that can reach nothing but
127.0.0.1 (every other host name fails to resolve, and any other connection
goes to a closed proxy port); Swagger UI must render the operations, and
Chromium's own log of network requests must name nothing off this server.
Chromium is found on PATH (``chromium``, ``chromium-browser``,
``google-chrome``...; Debian and Ubuntu: ``apt-get install chromium``) or at
``$CHROMIUM``; without it that test is skipped, saying so.

Then real responses of the running server are checked against the schemas
the document gives for their status: server and model metadata, inference
(JSON and the binary extension's header), the repository index, model
configuration, statistics, KServe v1, shared memory, logging and errors,
each object held to the fields the document names (no undocumented field).
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest

from modelport.examples import repository_path
from tests.integration.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.integration

CHROMIUM_NAMES = (
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
    "chrome",
    "chromium-headless-shell",
    "headless_shell",
)
INSTALL_HINT = "install it (Debian/Ubuntu: apt-get install chromium) or set $CHROMIUM"

DOUBLE = """
class Model:
    def predict(self, inputs):
        return {"y": inputs["x"] * 2}
"""

DOUBLE_CONFIG = """
backend: python
max_batch_size: 4
input:
- {name: x, data_type: TYPE_FP32, dims: [2]}
output:
- {name: y, data_type: TYPE_FP32, dims: [2]}
"""


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("docs-repo")
    shutil.copytree(repository_path() / "breast_cancer", root / "breast_cancer")
    (root / "double" / "1").mkdir(parents=True)
    (root / "double" / "1" / "model.py").write_text(textwrap.dedent(DOUBLE))
    (root / "double" / "config.yaml").write_text(DOUBLE_CONFIG)
    # A model that cannot load: the index then holds an UNAVAILABLE version with a reason.
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    logs = tmp_path_factory.mktemp("docs-logs")
    server = start_server(root, logs / "server.log", "--strict-readiness", "false")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def document(docs_server: Server) -> dict[str, Any]:
    reply = httpx.get(f"{docs_server.base}/openapi.json")
    assert reply.status_code == 200, reply.text
    doc: dict[str, Any] = reply.json()
    return doc


# ------------------------------------------------------------------------ the browser


def chromium() -> str | None:
    named = os.environ.get("CHROMIUM")
    if named:
        return named if shutil.which(named) else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def load_offline(browser: str, url: str, workdir: Path) -> tuple[str, list[str]]:
    """The DOM of ``url`` once scripts ran, and every URL the page asked the network for."""
    net_log = workdir / "net-log.json"
    args = [
        browser,
        "--headless",
        "--no-sandbox",  # tests may run as root, in containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        f"--user-data-dir={workdir / 'profile'}",
        # Off loopback, nothing resolves, and any connection goes to a closed port.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--proxy-server=127.0.0.1:9",
        "--proxy-bypass-list=127.0.0.1",
        f"--log-net-log={net_log}",
        "--virtual-time-budget=15000",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, page_requests(net_log, "http://127.0.0.1")


def page_requests(net_log: Path, site: str) -> list[str]:
    """The URLs requested on behalf of pages of ``site``, from a Chromium net log.

    A request a page (its HTML, scripts, styles) causes carries the page's
    site in its network isolation key, wherever it goes; Chromium's own
    background requests (updates, the clock) carry another and are left out.
    The log may be left unclosed: Chromium writes it as it goes.
    """
    text = net_log.read_text(errors="replace").rstrip().rstrip(",")
    for ending in ("", "]}", "}]}"):
        try:
            log = json.loads(text + ending)
            break
        except json.JSONDecodeError:
            continue
    else:
        raise AssertionError(f"unreadable net log: {text[-300:]!r}")
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = set()
    for event in log.get("events", []):
        params = event.get("params", {})
        key = str(params.get("network_isolation_key", ""))
        if event.get("type") == start_job and key.split(" ", maxsplit=1)[0] == site:
            urls.add(params["url"])
    return sorted(urls)


def test_docs_render_with_no_network_but_loopback(docs_server: Server, tmp_path: Path) -> None:
    browser = chromium()
    if browser is None:
        where = os.environ.get("CHROMIUM") or f"on PATH as {', '.join(CHROMIUM_NAMES)}"
        pytest.skip(f"Chromium not found ({where}): {INSTALL_HINT}")
    dom, urls = load_offline(browser, f"{docs_server.base}/docs", tmp_path)
    assert 'class="swagger-ui' in dom, dom[:2000]
    assert "Failed to load API definition" not in dom and "Unable to render" not in dom
    # Swagger UI rendered the document: its title, and the operations of every part.
    assert ">modelport<" in dom
    for path in (
        "/v2/models/{model}/infer",
        "/v2/repository/index",
        "/v1/models/{model}:predict",
        "/metrics",
        "/api/v1/models/{model}/traffic",
    ):
        assert f'data-path="{path}"' in dom, path
    # Everything the page asked for came from this server.
    ours = f"http://127.0.0.1:{docs_server.http_port}/"
    assert any(u.startswith(ours + "docs/assets/swagger-ui-bundle.js") for u in urls), urls
    documents = (ours + "openapi.json", ours + "docs/openapi-3.0.json")
    assert any(u in documents for u in urls), urls
    assert [u for u in urls if not u.startswith(ours)] == []


# ---------------------------------------------------------------- the files and documents


def raw_get(server: Server, path: str) -> int:
    """GET ``path`` exactly as written (http.client neither normalizes nor encodes it)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


@pytest.mark.parametrize(
    "path",
    [
        "/docs/assets/../../etc/passwd",
        "/docs/assets/..%2F..%2Fetc%2Fpasswd",
        "/docs/assets/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/docs/assets/%252e%252e%252fetc%252fpasswd",
        "/docs/assets/..%5c..%5cetc%5cpasswd",
        "/docs/assets/index.html",
        "/docs/assets/",
    ],
)
def test_path_tricks_find_nothing(docs_server: Server, path: str) -> None:
    assert raw_get(docs_server, path) == 404


def test_the_page_and_its_files(docs_server: Server) -> None:
    page = httpx.get(f"{docs_server.base}/docs")
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    css = httpx.get(f"{docs_server.base}/docs/assets/swagger-ui.css")
    assert css.status_code == 200 and css.headers["content-type"] == "text/css; charset=utf-8"
    assert "immutable" in css.headers["cache-control"] and css.headers["etag"]


def test_both_documents_are_served(docs_server: Server, document: dict[str, Any]) -> None:
    own = httpx.get(f"{docs_server.base}/api/v1/openapi.json")
    assert own.status_code == 200
    management = {"/api/v1" + p for p in own.json()["paths"]}
    assert management <= set(document["paths"])
    assert {"/v2", "/v2/models/{model}/infer", "/v2/repository/index", "/metrics"} <= set(
        document["paths"]
    )
    older = httpx.get(f"{docs_server.base}/docs/openapi-3.0.json")
    assert older.status_code == 200 and older.json()["openapi"].startswith("3.0.")


# ------------------------------------------------------- real responses, documented schemas


def closed(node: Any) -> Any:
    """Every object schema that lists its properties and says nothing of others refuses
    others: a response field the document does not name fails validation."""
    if isinstance(node, list):
        return [closed(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: closed(v) for k, v in node.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def operation_of(document: dict[str, Any], method: str, template: str) -> dict[str, Any]:
    operation: dict[str, Any] = document["paths"][template][method.lower()]
    return operation


def response_schema(
    document: dict[str, Any], method: str, template: str, status: int, media_type: str
) -> dict[str, Any] | None:
    responses = operation_of(document, method, template)["responses"]
    assert str(status) in responses, f"{method} {template}: {status} is not documented"
    response = responses[str(status)]
    if "$ref" in response:
        response = document["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    content = response.get("content", {})
    assert media_type in content, f"{method} {template} {status}: {media_type} not documented"
    schema: dict[str, Any] | None = content[media_type].get("schema")
    return schema


def check(
    document: dict[str, Any],
    method: str,
    template: str,
    reply: httpx.Response,
    body: Any = None,
) -> None:
    """``reply`` has a documented status and media type, and its body fits the schema."""
    media_type = reply.headers["content-type"]
    schema = response_schema(document, method, template, reply.status_code, media_type)
    if schema is None:
        return
    value = reply.json() if body is None else body
    strict = closed({**schema, "components": document["components"]})
    validator = jsonschema_rs.validator_for(strict)
    errors = [f"{e.instance_path}: {e.message}" for e in validator.iter_errors(value)]
    assert errors == [], (method, reply.url.path, value)


def test_server_and_model_metadata_match_the_document(
    docs_server: Server, document: dict[str, Any]
) -> None:
    base = docs_server.base
    for template, path in [
        ("/v2", "/v2"),
        ("/v2/health/live", "/v2/health/live"),
        ("/v2/health/ready", "/v2/health/ready"),
        ("/v2/models/{model}", "/v2/models/double"),
        ("/v2/models/{model}", "/v2/models/breast_cancer"),
        ("/v2/models/{model}/versions/{version}", "/v2/models/double/versions/1"),
        ("/v2/models/{model}/ready", "/v2/models/double/ready"),
        ("/v2/models/{model}/versions/{version}/ready", "/v2/models/double/versions/1/ready"),
        ("/v2/models/{model}/config", "/v2/models/double/config"),
        ("/v2/models/{model}/config", "/v2/models/breast_cancer/config"),
        ("/v1/models", "/v1/models"),
        ("/v1/models/{model}", "/v1/models/double"),
        ("/v2/systemsharedmemory/status", "/v2/systemsharedmemory/status"),
        ("/v2/logging", "/v2/logging"),
    ]:
        reply = httpx.get(base + path)
        assert reply.status_code == 200, (path, reply.text)
        check(document, "GET", template, reply)
    metadata = httpx.get(f"{base}/v2").json()
    assert "binary_tensor_data" in metadata["extensions"]


def test_inference_matches_the_document(docs_server: Server, document: dict[str, Any]) -> None:
    base = docs_server.base
    body = {
        "id": "r1",
        "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, -2.0]}],
        "outputs": [{"name": "y"}],
    }
    template = "/v2/models/{model}/infer"
    reply = httpx.post(f"{base}/v2/models/double/infer", json=body)
    assert reply.status_code == 200, reply.text
    check(document, "POST", template, reply)
    assert reply.json()["outputs"][0]["data"] == [3.0, -4.0]
    assert reply.json()["id"] == "r1"
    versioned = httpx.post(f"{base}/v2/models/double/versions/1/infer", json=body)
    check(document, "POST", "/v2/models/{model}/versions/{version}/infer", versioned)

    # The binary extension: its JSON header is an InferResponse too.
    binary = {**body, "parameters": {"binary_data_output": True}}
    reply = httpx.post(f"{base}/v2/models/double/infer", json=binary)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/octet-stream"
    header_length = int(reply.headers["inference-header-content-length"])
    header = json.loads(reply.content[:header_length])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 8
    response_schema(document, "POST", template, 200, "application/octet-stream")
    ok = {**reply.headers, "content-type": "application/json"}
    check(document, "POST", template, httpx.Response(200, headers=ok), header)

    predict = httpx.post(f"{base}/v1/models/double:predict", json={"instances": [[1.0, 2.0]]})
    assert predict.status_code == 200, predict.text
    check(document, "POST", "/v1/models/{model}:predict", predict)

    for template, path in [
        ("/v2/models/stats", "/v2/models/stats"),
        ("/v2/models/{model}/stats", "/v2/models/double/stats"),
        ("/v2/models/{model}/versions/{version}/stats", "/v2/models/double/versions/1/stats"),
    ]:
        reply = httpx.get(base + path)
        assert reply.status_code == 200, reply.text
        check(document, "GET", template, reply)
    stats = httpx.get(f"{base}/v2/models/double/stats").json()["model_stats"][0]
    assert stats["inference_count"] >= 3 and stats["batch_stats"]


def test_the_repository_index_matches_the_document(
    docs_server: Server, document: dict[str, Any]
) -> None:
    for body in (None, {}, {"ready": True}):
        reply = httpx.post(
            f"{docs_server.base}/v2/repository/index",
            content=b"" if body is None else json.dumps(body).encode(),
        )
        assert reply.status_code == 200, reply.text
        check(document, "POST", "/v2/repository/index", reply)
    index = httpx.post(f"{docs_server.base}/v2/repository/index").json()
    broken = [e for e in index if e["name"] == "broken"]
    assert broken and broken[0]["state"] == "UNAVAILABLE" and broken[0]["reason"]


def test_errors_match_the_document(docs_server: Server, document: dict[str, Any]) -> None:
    base = docs_server.base
    cases = [
        ("GET", "/v2/models/{model}", "/v2/models/nope", None, 404),
        ("GET", "/v2/models/{model}/ready", "/v2/models/nope/ready", None, 404),
        ("GET", "/v2/models/{model}/ready", "/v2/models/broken/ready", None, 503),
        ("GET", "/v2/models/{model}/versions/{version}", "/v2/models/double/versions/9", None, 404),
        ("GET", "/v2/models/{model}/config", "/v2/models/nope/config", None, 404),
        ("GET", "/v2/models/{model}/stats", "/v2/models/nope/stats", None, 404),
        ("GET", "/v1/models/{model}", "/v1/models/nope", None, 404),
        ("POST", "/v2/models/{model}/infer", "/v2/models/nope/infer", {"inputs": []}, 404),
        ("POST", "/v2/models/{model}/infer", "/v2/models/double/infer", {"inputs": 1}, 400),
        (
            "POST",
            "/v2/models/{model}/infer",
            "/v2/models/double/infer",
            {"inputs": [], "surprise": 1},
            400,
        ),
        ("POST", "/v2/repository/index", "/v2/repository/index", {"ready": "yes"}, 400),
        ("POST", "/v1/models/{model}:predict", "/v1/models/double:predict", {}, 400),
        ("POST", "/v2/logging", "/v2/logging", {"log_file": "/tmp/x"}, 400),
        (
            "GET",
            "/v2/systemsharedmemory/region/{name}/status",
            "/v2/systemsharedmemory/region/none/status",
            None,
            404,
        ),
        ("GET", "/v2/cudasharedmemory/status", "/v2/cudasharedmemory/status", None, 400),
    ]
    for method, template, path, body, status in cases:
        reply = httpx.request(method, base + path, json=body)
        assert reply.status_code == status, (path, reply.text)
        check(document, method, template, reply)
        assert set(reply.json()) == {"error"}


def example_path(template: str) -> str:
    return template.replace("{model}", "double").replace("{version}", "1").replace("{name}", "r")


def test_every_documented_operation_is_served_and_answers_a_documented_status(
    docs_server: Server, document: dict[str, Any]
) -> None:
    """Reads as they are; every POST with a body it refuses (``[]``), so nothing changes."""
    for template, item in document["paths"].items():
        if template.startswith("/api/v1"):
            continue  # the management API: its own tests, and schemathesis (test_fuzz_api.py)
        for method, operation in item.items():
            path = example_path(template)
            if method == "post":
                reply = httpx.post(docs_server.base + path, content=b"[]")
            else:
                reply = httpx.request(method.upper(), docs_server.base + path)
            where = (method, template, reply.status_code, reply.text[:200])
            assert "no route for" not in reply.text, where
            assert str(reply.status_code) in _resolved_statuses(operation), where


def _resolved_statuses(operation: dict[str, Any]) -> set[str]:
    return set(operation["responses"])


def test_metrics_are_documented_as_served(docs_server: Server, document: dict[str, Any]) -> None:
    reply = httpx.get(f"{docs_server.base}/metrics")
    assert reply.status_code == 200
    assert response_schema(document, "GET", "/metrics", 200, reply.headers["content-type"])


def test_documents_are_not_changed_by_being_read(
    docs_server: Server, document: dict[str, Any]
) -> None:
    again = httpx.get(f"{docs_server.base}/openapi.json").json()
    assert again == copy.deepcopy(document)
