"""The combined OpenAPI document (``/openapi.json``): valid, complete, and true to the server.

Valid: against the OpenAPI 3.1 meta-schema (and its 3.0 rendering against
3.0's), every schema a valid JSON Schema 2020-12, and loadable by
schemathesis operation by operation. Complete: every REST route the app
serves is documented with its methods, and nothing else. True: the request
bodies' fields are the decoder's, and the documented example is accepted by
it. The integration tests (test_docs_offline.py) check real responses.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import jsonschema_rs
import msgspec
import pytest
import schemathesis
from schemathesis.core.result import Err
from schemathesis.specs.openapi import definitions
from starlette.routing import Route

from modelport.controlplane.api import build_api, openapi_inference
from modelport.controlplane.api.docs_assets import as_openapi_30
from modelport.dataplane.codec import json_v2
from modelport.dataplane.transport.http.routes_logging import routes as logging_routes
from modelport.types import DTYPES
from tests.unit.dataplane.test_route_roles import Services, guarded_app, rest_app

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def fetch(app: Any, path: str, who: str | None = None) -> httpx.Response:
    headers = {} if who is None else {"Authorization": f"Bearer {who}"}

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get(path, headers=headers)

    return asyncio.run(send())


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    reply = fetch(rest_app(), "/openapi.json")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    doc: dict[str, Any] = reply.json()
    return doc


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    jsonschema_rs.validate(definitions.OPENAPI_31, document)
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name


def test_schemathesis_loads_every_operation(document: dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_dict(document)
    results = list(schema.get_all_operations())
    errors = [str(result.err()) for result in results if isinstance(result, Err)]
    assert errors == []
    operations = [result.ok() for result in results]
    documented = sum(
        1 for item in document["paths"].values() for method in item if method in METHODS
    )
    assert len(operations) == documented >= 45


def test_the_swagger_ui_4_rendering_is_valid_openapi_3_0(document: dict[str, Any]) -> None:
    older = as_openapi_30(document)
    assert older["openapi"] == "3.0.3"
    jsonschema_rs.validate(definitions.OPENAPI_30, older)
    text = json.dumps(older)
    assert '"type": "null"' not in text and '"const"' not in text
    assert older["paths"].keys() == document["paths"].keys()


def served_routes() -> set[tuple[str, str]]:
    """(METHOD, path) of every route of the REST app as server.py builds it: the data
    plane's, the management API mounted at /api/v1, /docs, and the logging extension."""
    found = set()
    walked = list(rest_app().routes.walk())
    walked += [("", route) for route in logging_routes(None)]  # type: ignore[arg-type]
    for prefix, route in walked:
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method != "HEAD":
                found.add((method, prefix + route.path))
    return found


def test_every_route_served_is_documented_and_nothing_else(document: dict[str, Any]) -> None:
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }
    # The pages and documents themselves are not operations of the API.
    undocumented = {
        ("GET", "/docs"),
        ("GET", "/docs/assets/{name}"),
        ("GET", "/openapi.json"),
        ("GET", "/docs/openapi-3.0.json"),
        ("GET", "/api/v1/openapi.json"),
    }
    assert documented == served_routes() - undocumented


def test_the_management_part_is_the_management_apis_own_document(
    document: dict[str, Any],
) -> None:
    own = build_api(Services(), lambda exc: 500).openapi()  # type: ignore[arg-type]
    prefix = openapi_inference.MANAGEMENT_PREFIX
    for path, item in own["paths"].items():
        combined = document["paths"][prefix + path]
        for method, operation in item.items():
            tagged = combined[method]
            assert tagged["tags"][0] == openapi_inference.TAG_MANAGEMENT
            assert {**tagged, "tags": tagged["tags"][1:]} == {
                **operation,
                "tags": operation.get("tags", []),
            }
    for name, schema in own["components"]["schemas"].items():
        assert document["components"]["schemas"][name] == schema


def test_the_documented_datatypes_are_the_servers(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for model in ("RequestInput", "TensorMetadata", "ResponseOutput"):
        assert schemas[model]["properties"]["datatype"]["enum"] == list(DTYPES), model


@pytest.mark.parametrize(
    ("schema", "struct"),
    [
        ("InferRequest", json_v2.RequestBody),
        ("RequestInput", json_v2.InputTensor),
        ("RequestOutput", json_v2.OutputRequest),
        ("InferResponse", json_v2.ResponseBody),
        ("ResponseOutput", json_v2.OutputTensor),
    ],
)
def test_the_documented_fields_are_the_decoders(
    document: dict[str, Any], schema: str, struct: type[msgspec.Struct]
) -> None:
    described = document["components"]["schemas"][schema]
    fields = msgspec.structs.fields(struct)
    assert set(described["properties"]) == {f.name for f in fields}
    required = {f.name for f in fields if f.required}
    assert set(described.get("required", [])) == required
    # The decoder refuses unknown fields; so does the document, for requests.
    if struct.__struct_config__.forbid_unknown_fields:
        assert described["additionalProperties"] is False


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    return jsonschema_rs.validator_for({**schema, "components": document["components"]})


def _request_schema(document: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    schema: dict[str, Any] = document["paths"][path][method]["requestBody"]["content"][
        "application/json"
    ]["schema"]
    return schema


def test_the_documented_infer_example_is_accepted_by_the_server(
    document: dict[str, Any],
) -> None:
    content = document["paths"]["/v2/models/{model}/infer"]["post"]["requestBody"]["content"]
    example = content["application/json"]["example"]
    assert _validator(document, content["application/json"]["schema"]).is_valid(example)
    decoded = json_v2.decode_request(json.dumps(example).encode(), None, "m", None, 1000)
    assert [t.name for t in decoded.inputs] == ["INPUT0"]
    assert "application/octet-stream" in content


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"inputs": []}, True),
        ({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}, True),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [2],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 8},
                    }
                ],
                "parameters": {"binary_data_output": True, "priority": 1, "custom": "a"},
                "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
                "id": "7",
            },
            True,
        ),
        ({}, False),  # inputs are required
        ({"inputs": [], "extra": 1}, False),  # unknown fields are refused
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP128", "data": [1]}]}, False),
        ({"inputs": [], "parameters": {"priority": -1}}, False),
        ({"inputs": [], "parameters": {"nested": {"a": 1}}}, False),  # parameters are scalars
    ],
)
def test_the_infer_request_schema_accepts_what_the_decoder_accepts(
    document: dict[str, Any], body: dict[str, Any], valid: bool
) -> None:
    schema = _request_schema(document, "/v2/models/{model}/infer", "post")
    assert _validator(document, schema).is_valid(body) is valid


def test_errors_and_open_routes(document: dict[str, Any]) -> None:
    paths = document["paths"]
    for path in ("/v2/health/live", "/v2/health/ready"):
        operation = paths[path]["get"]
        assert operation["security"] == []
        assert "401" not in operation["responses"]
    infer = paths["/v2/models/{model}/infer"]["post"]["responses"]
    assert {"400", "401", "403", "404", "413", "429", "451", "500", "503", "504"} <= set(infer)
    error = document["components"]["responses"]["NotFound"]["content"]["application/json"]
    body = document["components"]["schemas"]["InferenceError"]
    assert error["schema"] == {"$ref": "#/components/schemas/InferenceError"}
    assert body["required"] == ["error"]
    assert "Bearer" in json.dumps(document["components"]["responses"]["Unauthenticated"])


def test_component_names_may_not_clash() -> None:
    management = {"components": {"schemas": {"InferResponse": {"type": "object"}}}}
    with pytest.raises(ValueError, match="InferResponse"):
        openapi_inference.combined_document(management, "0")


def test_the_documents_need_the_viewer_role_like_the_management_document() -> None:
    app = guarded_app()
    for path in ("/openapi.json", "/docs/openapi-3.0.json", "/api/v1/openapi.json"):
        assert fetch(app, path).status_code == 401, path
        assert fetch(app, path, "nobody").status_code == 403, path
        assert fetch(app, path, "fraud-viewer").status_code == 200, path
