"""``/docs`` without the internet: Swagger UI's files served from the installed package.

The page, its script and stylesheet all come from this server: Swagger UI's
files from the ``swagger_ui_bundle`` package (``swagger_ui_path``), and a
small script of ours that starts it. Only the files named in ``FILES`` are
served, looked up by exact name (``/docs/assets/{name}``): no directory is
listed and no path is ever built from the request, so ``..`` or an encoded
slash finds nothing (404). Each file is read once, kept in memory with its
gzip form and an ETag, and cached by browsers: the page links every file
with ``?v=<hash>``, so an upgrade changes the link and the cache can be
kept for a year.

The page sends a Content-Security-Policy that lets it load scripts, styles,
images and data only from this server, so a file of Swagger UI that names
another host (a CDN, fonts, the online validator) cannot reach it.

Swagger UI before 5 renders OpenAPI 3.0 only; with such a bundle the page
shows :func:`as_openapi_30`'s rendering of the document (``/docs/openapi-3.0.json``),
with 5 or later the 3.1 document itself (``/openapi.json``).
"""

from __future__ import annotations

import gzip
import hashlib
import html
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

#: The files the page needs, by the name it links them with, and their types.
FILES: dict[str, str] = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
#: Our own script, which starts Swagger UI on the page (no inline script: the CSP forbids it).
START_SCRIPT = "start-swagger-ui.js"

#: The page's policy: nothing from anywhere but this server. Swagger UI styles
#: elements inline and draws some images as data: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: Files are linked with their hash, so a browser may keep them; "private":
#: they are served to authenticated callers when authentication is on.
ASSET_CACHE = "private, max-age=31536000, immutable"

_START = b"""\
"use strict";
// Starts Swagger UI on /docs; the page says where the document is.
(function () {
  var script = document.currentScript;
  window.addEventListener("load", function () {
    window.ui = SwaggerUIBundle({
      url: script.dataset.openapi,
      dom_id: "#swagger-ui",
      deepLinking: true,
      docExpansion: "list",
      showExtensions: true,
      showCommonExtensions: true,
      displayRequestDuration: true,
      persistAuthorization: false,
      // The online validator is another host: never asked.
      validatorUrl: null,
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout"
    });
  });
})();
"""


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    media_type: str
    etag: str

    @property
    def version(self) -> str:
        return self.etag.strip('"')[:16]


def bundle_dir() -> Path:
    """Where the installed ``swagger_ui_bundle`` keeps Swagger UI's files."""
    import swagger_ui_bundle  # type: ignore[import-untyped,unused-ignore]

    path: Path = Path(str(swagger_ui_bundle.swagger_ui_path))
    return path


def swagger_ui_major(path: Path | None = None) -> int:
    """Swagger UI's major version, read from the bundle's folder (``swagger-ui-4.15.5``)."""
    found = re.search(r"swagger-ui-(\d+)\.", (path or bundle_dir()).name)
    return int(found[1]) if found else 0


def _asset(body: bytes, media_type: str) -> Asset:
    digest = hashlib.sha256(body).hexdigest()
    return Asset(body, gzip.compress(body, 9, mtime=0), media_type, f'"{digest[:32]}"')


@cache
def asset(name: str) -> Asset | None:
    """The file linked as ``name``, read once; None for any name the page does not link."""
    if name == START_SCRIPT:
        return _asset(_START, FILES["swagger-ui-bundle.js"])
    media_type = FILES.get(name)
    if media_type is None:
        return None
    return _asset((bundle_dir() / name).read_bytes(), media_type)


def asset_response(request: Request, name: str) -> Response | None:
    """The file, gzipped when the client takes it, 304 when its copy is current;
    None for a name the page does not link."""
    found = asset(name)
    if found is None:
        return None
    headers = {
        "Cache-Control": ASSET_CACHE,
        "ETag": found.etag,
        "X-Content-Type-Options": "nosniff",
        "Vary": "Accept-Encoding",
    }
    if found.etag in _tags(request.headers.get("if-none-match", "")):
        return Response(status_code=304, headers=headers)
    body = found.body
    if _takes_gzip(request.headers.get("accept-encoding", "")):
        body = found.gzipped
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=found.media_type, headers=headers)


def _tags(header: str) -> set[str]:
    return {t.strip().removeprefix("W/") for t in header.split(",") if t.strip()}


def _takes_gzip(header: str) -> bool:
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().lower()
            return not (q.startswith("q=") and q[2:].strip("0. ") == "")
    return False


def page(request: Request, openapi_url: str, title: str) -> HTMLResponse:
    """The /docs page: every file it links is on this server."""
    root = request.scope.get("root_path", "")

    def link(name: str) -> str:
        found = asset(name)
        version = found.version if found is not None else ""
        return html.escape(f"{root}/docs/assets/{name}?v={version}")

    text = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="icon" type="image/png" sizes="32x32" href="{link("favicon-32x32.png")}">
<link rel="icon" type="image/png" sizes="16x16" href="{link("favicon-16x16.png")}">
<link rel="stylesheet" href="{link("swagger-ui.css")}">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{link("swagger-ui-bundle.js")}"></script>
<script src="{link(START_SCRIPT)}" data-openapi="{html.escape(root + openapi_url)}"></script>
</body>
</html>
"""
    return HTMLResponse(
        text,
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


# ------------------------------------------------------------- OpenAPI 3.0 for Swagger UI 4


def as_openapi_30(document: dict[str, Any]) -> dict[str, Any]:
    """The 3.1 document as OpenAPI 3.0 for Swagger UI before 5, which renders 3.0 only.

    For display: what 3.0 lacks is rewritten to its nearest 3.0 form (a null
    branch becomes ``nullable``, ``const`` a one-value ``enum``, ``examples``
    in a schema its first ``example``, numeric exclusive bounds the boolean
    ones, ``contentMediaType`` ``format: binary``); 3.1-only keys are dropped.
    """
    out: dict[str, Any] = _to_30(document)
    out["openapi"] = "3.0.3"
    for key in ("webhooks", "jsonSchemaDialect"):
        out.pop(key, None)
    info = out.get("info", {})
    info.pop("summary", None)
    info.get("license", {}).pop("identifier", None)
    return out


#: Keys whose value maps names to objects: the names are never keywords.
_NAME_MAPS = frozenset(
    {
        "properties",
        "patternProperties",
        "$defs",
        "schemas",
        "responses",
        "parameters",
        "headers",
        "content",
        "paths",
        "securitySchemes",
        "examples",
        "requestBodies",
    }
)


def _to_30(node: Any) -> Any:
    if isinstance(node, list):
        return [_to_30(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: {name: _to_30(item) for name, item in v.items()}
        if k in _NAME_MAPS and isinstance(v, dict)
        else _to_30(v)
        for k, v in node.items()
        if k not in ("$schema", "$id")
    }
    for key in ("anyOf", "oneOf"):
        branches = out.get(key)
        if isinstance(branches, list) and {"type": "null"} in branches:
            rest = [b for b in branches if b != {"type": "null"}]
            out.pop(key)
            if len(rest) == 1:
                only = rest[0]
                out.update({"allOf": [only]} if "$ref" in only else only)
            else:
                out[key] = rest
            out["nullable"] = True
    kind = out.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        if len(kinds) < len(kind):
            out["nullable"] = True
        if len(kinds) == 1:
            out["type"] = kinds[0]
        else:
            out.pop("type")
            out["anyOf"] = [{"type": k} for k in kinds]
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if isinstance(out.get("examples"), list):
        examples = out.pop("examples")
        if examples:
            out["example"] = examples[0]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = out.get(bound)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[plain] = value
            out[bound] = True
    if "contentMediaType" in out:
        out.pop("contentMediaType")
        out.setdefault("format", "binary")
    if "$ref" in out and len(out) > 1:
        # 3.0 ignores a reference's siblings: keep them beside it in an allOf.
        out = {**{k: v for k, v in out.items() if k != "$ref"}, "allOf": [{"$ref": out["$ref"]}]}
    return out


__all__ = [
    "ASSET_CACHE",
    "CONTENT_SECURITY_POLICY",
    "FILES",
    "START_SCRIPT",
    "as_openapi_30",
    "asset",
    "asset_response",
    "bundle_dir",
    "page",
    "swagger_ui_major",
]
