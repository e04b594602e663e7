"""``/docs`` and its files, served from the installed ``swagger_ui_bundle``: only the
files the page links, with their types and cache headers, and nothing by path tricks."""

from __future__ import annotations

import asyncio
import gzip
import re
from typing import Any

import pytest

from modelport.controlplane.api import docs_assets
from modelport.controlplane.api.docs_assets import (
    ASSET_CACHE,
    FILES,
    START_SCRIPT,
    as_openapi_30,
    bundle_dir,
    swagger_ui_major,
)
from tests.unit.dataplane.test_route_roles import guarded_app, rest_app

Reply = tuple[int, dict[str, str], bytes]


def get(app: Any, path: str, headers: dict[str, str] | None = None, root: str = "") -> Reply:
    """One GET through the app as uvicorn hands it over: ``path`` already percent-decoded."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "root_path": root,
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 1234),
        "server": ("t", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    head = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], head, body


@pytest.fixture(scope="module")
def app() -> Any:
    return rest_app()


def linked(page: str) -> list[str]:
    return re.findall(r'(?:src|href|data-openapi)="([^"]+)"', page)


def test_the_page_links_only_files_of_this_server(app: Any) -> None:
    status, headers, body = get(app, "/docs")
    assert status == 200
    page = body.decode()
    assert headers["content-type"].startswith("text/html")
    assert headers["cache-control"] == "no-cache"
    assert not re.search(r"(https?:)?//", page), "the page names another host"
    links = linked(page)
    assert {link.split("?")[0] for link in links} >= {
        "/docs/assets/swagger-ui-bundle.js",
        "/docs/assets/swagger-ui.css",
        f"/docs/assets/{START_SCRIPT}",
        "/docs/assets/favicon-32x32.png",
    }
    assets = [link for link in links if link.startswith("/docs/assets/")]
    assert all(re.search(r"\?v=[0-9a-f]{16}$", link) for link in assets), assets
    # Nothing may be loaded from anywhere else, whatever a file of Swagger UI names.
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self';" in policy
    assert "http" not in policy and "*" not in policy


def test_behind_a_prefix_the_page_links_under_it(app: Any) -> None:
    _, _, body = get(app, "/docs", root="/serving")
    assert all(link.startswith("/serving/") for link in linked(body.decode()))


@pytest.mark.parametrize("major", [4, 5])
def test_the_page_shows_the_document_its_swagger_ui_renders(
    app: Any, monkeypatch: pytest.MonkeyPatch, major: int
) -> None:
    monkeypatch.setattr(docs_assets, "swagger_ui_major", lambda path=None: major)
    _, _, body = get(app, "/docs")
    (url,) = re.findall(r'data-openapi="([^"]+)"', body.decode())
    assert url == ("/openapi.json" if major >= 5 else "/docs/openapi-3.0.json")
    status, headers, _ = get(app, url)
    assert status == 200 and headers["content-type"] == "application/json"


def test_swagger_ui_major_is_read_from_the_bundles_folder(tmp_path: Any) -> None:
    assert swagger_ui_major(tmp_path / "swagger-ui-4.15.5") == 4
    assert swagger_ui_major(tmp_path / "swagger-ui-5.31.0") == 5
    assert swagger_ui_major(tmp_path / "elsewhere") == 0
    assert swagger_ui_major() >= 4  # the installed bundle


@pytest.mark.parametrize("name", sorted(FILES))
def test_each_file_the_page_needs_is_served_from_the_package(app: Any, name: str) -> None:
    on_disk = (bundle_dir() / name).read_bytes()
    status, headers, body = get(app, f"/docs/assets/{name}")
    assert status == 200
    assert body == on_disk
    assert headers["content-type"] == FILES[name]
    assert headers["cache-control"] == ASSET_CACHE
    assert headers["x-content-type-options"] == "nosniff"
    assert "content-encoding" not in headers
    etag = headers["etag"]
    # Compressed for a client that takes gzip; not modified for one that has it.
    status, zipped, body = get(app, f"/docs/assets/{name}", {"Accept-Encoding": "gzip, br"})
    assert status == 200 and zipped["content-encoding"] == "gzip"
    assert gzip.decompress(body) == on_disk
    status, _, body = get(app, f"/docs/assets/{name}", {"If-None-Match": etag})
    assert (status, body) == (304, b"")


def test_gzip_refused_with_q_0_is_not_sent(app: Any) -> None:
    _, headers, _ = get(app, "/docs/assets/swagger-ui.css", {"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in headers


def test_the_start_script_asks_no_other_host(app: Any) -> None:
    status, headers, body = get(app, f"/docs/assets/{START_SCRIPT}")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    script = body.decode()
    assert "validatorUrl: null" in script and "//" not in script.replace("// ", "")


@pytest.mark.parametrize(
    "path",
    [
        # Files of the bundle the page does not link.
        "/docs/assets/index.html",
        "/docs/assets/swagger-initializer.js",
        "/docs/assets/swagger-ui-bundle.js.map",
        "/docs/assets/oauth2-redirect.html",
        "/docs/assets/SWAGGER-UI.CSS",
        # No listing.
        "/docs/assets",
        "/docs/assets/",
        # Paths out of the folder, as sent and as uvicorn decodes %2e%2e%2f.
        "/docs/assets/../../etc/passwd",
        "/docs/assets/..",
        "/docs/assets/.",
        "/docs/assets/../__init__.py",
        "/docs/assets//etc/passwd",
        "/docs/assets/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/docs/assets/..\\..\\etc\\passwd",
        "/docs/assets/swagger-ui.css/../../../etc/passwd",
        "/docs/assets/swagger-ui.css\x00",
        "/docs/assets/~/.ssh/id_rsa",
    ],
)
def test_nothing_else_is_served(app: Any, path: str) -> None:
    status, headers, body = get(app, path)
    assert status == 404, (path, body)
    assert headers["content-type"] == "application/json"
    assert body.startswith(b'{"error":')


def test_a_trailing_slash_redirects_to_the_file_as_on_every_route(app: Any) -> None:
    status, headers, _ = get(app, "/docs/assets/swagger-ui.css/")
    assert status == 307  # Starlette's redirect_slashes, the router's for every path
    assert headers["location"].endswith("/docs/assets/swagger-ui.css")


def test_the_files_need_the_viewer_role_like_the_page() -> None:
    app = guarded_app()
    for path in ("/docs", "/docs/assets/swagger-ui.css", f"/docs/assets/{START_SCRIPT}"):
        assert get(app, path)[0] == 401, path
        assert get(app, path, {"Authorization": "Bearer nobody"})[0] == 403, path
        assert get(app, path, {"Authorization": "Bearer fraud-viewer"})[0] == 200, path
    # A name no file has: the same answers as any path no route serves.
    assert get(app, "/docs/assets/nothing")[0] == 401
    assert get(app, "/docs/assets/nothing", {"Authorization": "Bearer fraud-viewer"})[0] == 404


def test_openapi_30_rendering_rewrites_what_3_0_lacks() -> None:
    document = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1", "summary": "s"},
        "paths": {},
        "components": {
            "schemas": {
                "A": {
                    "type": "object",
                    "properties": {
                        "const": {"const": 3},
                        "type": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                        "ref": {"anyOf": [{"$ref": "#/components/schemas/B"}, {"type": "null"}]},
                        "both": {"type": ["string", "null"], "examples": ["x"]},
                        "above": {"type": "number", "exclusiveMinimum": 0},
                        "raw": {"type": "string", "contentMediaType": "application/octet-stream"},
                        "described": {"$ref": "#/components/schemas/B", "description": "d"},
                    },
                },
                "B": {"type": "string"},
            }
        },
    }
    older = as_openapi_30(document)
    assert older["openapi"] == "3.0.3" and "summary" not in older["info"]
    props = older["components"]["schemas"]["A"]["properties"]
    assert props["const"] == {"enum": [3]}
    assert props["type"] == {"type": "integer", "nullable": True}
    assert props["ref"] == {"allOf": [{"$ref": "#/components/schemas/B"}], "nullable": True}
    assert props["both"] == {"type": "string", "nullable": True, "example": "x"}
    assert props["above"] == {"type": "number", "minimum": 0, "exclusiveMinimum": True}
    assert props["raw"] == {"type": "string", "format": "binary"}
    assert props["described"] == {"description": "d", "allOf": [{"$ref": "#/components/schemas/B"}]}
    assert document["openapi"] == "3.1.0"  # the original is left alone
