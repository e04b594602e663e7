"""The OpenAPI description of the data plane's REST routes, and the combined document.

The inference routes are plain Starlette routes (``dataplane/transport/http``),
so nothing generates their OpenAPI description. It is written here: bodies
as pydantic models (their JSON Schema becomes ``components.schemas``), paths
by hand, after ``routes_v2.py``, ``routes_triton.py``, ``routes_v1.py``,
``fastpath.py`` and ``/metrics``. Path templates are the router's own
(``{model}``, ``{version}``) so a test can check that every route served is
documented and nothing else is.

:func:`combined_document` joins it with the management API's document
(FastAPI's, paths prefixed with ``/api/v1``) into the one OpenAPI 3.1
document served at ``/openapi.json`` and shown at ``/docs``.

The control plane may not import the transports (import-linter), so the
statuses below are written out from ``transport/http/errors.py``'s table;
the integration tests check real responses against these schemas.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema, models_json_schema

from modelport.config.model import ModelConfig

JSON = "application/json"
BINARY = "application/octet-stream"
#: What ``/metrics`` answers with (``observability.metrics.CONTENT_TYPE``).
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MANAGEMENT_PREFIX = "/api/v1"
REF = "#/components/schemas/{model}"

#: The protocol's datatypes (``modelport.types.DTYPES``; a unit test keeps the two equal).
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16", "BYTES",
]  # fmt: skip

TAG_HEALTH = "Health"
TAG_V2 = "Inference (Open Inference Protocol v2)"
TAG_TRITON = "Triton extensions"
TAG_V1 = "KServe v1"
TAG_METRICS = "Metrics"
TAG_SHM = "Shared memory"
TAG_MANAGEMENT = "Management API (/api/v1)"

_SCALAR = str | int | float | bool | None
#: A field that may be absent but, when present, is never null (``x: T | Absent = None``).
Absent = SkipJsonSchema[None]
NonNegative = Annotated[int, Field(ge=0)]


class _Request(BaseModel):
    """Request bodies: unknown fields are refused (400), as the server's decoder does."""

    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------- errors, health


class InferenceError(BaseModel):
    """Every refusal of the data plane: one field, a message for people."""

    error: str = Field(description="What was wrong, e.g. `unknown model 'x'`.")


class ServerLive(BaseModel):
    live: bool = Field(description="Always true: the process answers.")


class ServerReady(BaseModel):
    ready: bool = Field(
        description="Whether every model the server must serve is ready (503 with false when not)."
    )


# ----------------------------------------------------------------------- metadata


class ServerMetadata(BaseModel):
    name: str = Field(description="The server's name: `modelport`.")
    version: str = Field(description="modelport's version.")
    extensions: list[str] = Field(
        description="Protocol extensions served, e.g. `binary_tensor_data`, "
        "`model_repository`, `model_configuration`, `statistics`, `system_shared_memory`."
    )


class TensorMetadata(BaseModel):
    name: str
    datatype: Datatype = Field(description="The tensor's Open Inference Protocol datatype.")
    shape: list[int] = Field(
        description="Dimensions; -1 is a dimension of any size (the batch dimension of a "
        "batching model is -1)."
    )


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(
        description="The version asked for, or every version the repository offers."
    )
    platform: str = Field(description="The model's platform or backend, e.g. `onnxruntime_onnx`.")
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    name: str
    ready: Literal[True] = Field(
        description="Always true in a 200; a model that cannot serve answers 503 (404 when "
        "unknown) with an error body."
    )


# -------------------------------------------------------------------------- infer


class InputParameters(BaseModel):
    """Parameters of one input. Others are passed to the model untouched."""

    binary_data_size: int | None = Field(
        None,
        ge=0,
        description="Binary tensor extension: the input's data is this many raw bytes after "
        "the JSON header, instead of `data` (the two exclude each other). Inputs carrying it "
        "take their bytes in the order they are listed.",
    )
    shared_memory_region: str | Absent = Field(
        None,
        description="System shared-memory extension: read the input from this region the "
        "caller registered, instead of `data` (with `shared_memory_byte_size`).",
    )
    shared_memory_byte_size: NonNegative | Absent = Field(
        None, description="Bytes of the tensor in the region (with `shared_memory_region`)."
    )
    shared_memory_offset: NonNegative | Absent = Field(
        None, description="Where the tensor starts in the region; 0 when absent."
    )
    __pydantic_extra__: dict[str, _SCALAR] = Field(init=False)
    model_config = ConfigDict(extra="allow")


class RequestInput(_Request):
    name: str = Field(description="The input's name, as the model metadata lists it.")
    shape: list[int] = Field(
        description="Dimensions, each a non-negative integer; their product is the element "
        "count, at most the server's `max_elements`."
    )
    datatype: Datatype = Field(description="One of the protocol's datatypes.")
    parameters: InputParameters | Absent = Field(
        None, description="`binary_data_size` for an input sent as raw bytes."
    )
    data: list[Any] | float | int | bool | str | Absent = Field(
        None,
        description="The elements in row-major order: a flat list, or lists nested as the "
        "shape. BYTES elements are strings; BOOL true/false; FP16 and BF16 are sent as numbers. "
        "Required unless `parameters.binary_data_size` is given.",
    )


class OutputParameters(BaseModel):
    """Parameters of one requested output."""

    binary_data: bool | None = Field(
        None,
        description="Return this output as raw bytes after the JSON header (overrides the "
        "request's `binary_data_output`).",
    )
    classification: int | None = Field(
        None,
        description="Triton's classification extension is not served: any non-zero value is "
        "refused with 400.",
    )
    shared_memory_region: str | Absent = Field(
        None,
        description="System shared-memory extension: write the output to this region the "
        "caller registered (with `shared_memory_byte_size`); the response then has no `data`.",
    )
    shared_memory_byte_size: NonNegative | Absent = Field(
        None, description="Room for the output in the region."
    )
    shared_memory_offset: NonNegative | Absent = Field(
        None, description="Where the output starts in the region; 0 when absent."
    )
    __pydantic_extra__: dict[str, _SCALAR] = Field(init=False)
    model_config = ConfigDict(extra="allow")


class RequestOutput(_Request):
    name: str = Field(description="An output of the model; each may be asked for once.")
    parameters: OutputParameters | Absent = None


#: Triton's correlation ids are unsigned 64-bit integers.
SequenceId = Annotated[int, Field(ge=0, le=(1 << 64) - 1)]


class RequestParameters(BaseModel):
    """Request-wide parameters. Others are passed to the model (and may name the traffic
    policy's `sticky_key`)."""

    binary_data_output: bool | None = Field(
        None,
        description="Binary tensor extension: return every output as raw bytes after the JSON "
        "header, unless an output's own `binary_data` says otherwise.",
    )
    priority: NonNegative | Absent = Field(
        None, description="Scheduling priority level (the model's dynamic batching)."
    )
    timeout: NonNegative | Absent = Field(
        None,
        description="Microseconds the request may wait in the model's queue before it is "
        "refused (when the model's queue policy allows the override).",
    )
    sequence_id: SequenceId | str | None = Field(
        None,
        description="Sequence batching: the sequence (an unsigned 64-bit integer or a string) "
        "the request belongs to. 0 or an empty string names none.",
    )
    sequence_start: bool | None = Field(None, description="Sequence batching: the first request.")
    sequence_end: bool | None = Field(None, description="Sequence batching: the last request.")
    __pydantic_extra__: dict[str, _SCALAR] = Field(init=False)
    model_config = ConfigDict(extra="allow")


class InferRequest(_Request):
    """The JSON body of an inference request (with the binary extension: its JSON header)."""

    id: str | None = Field(None, description="Echoed in the response.")
    parameters: RequestParameters | Absent = None
    inputs: list[RequestInput] = Field(description="Each input of the model, once.")
    outputs: list[RequestOutput] | None = Field(
        None, description="The outputs wanted, and how; all of them when absent."
    )


class ResponseOutputParameters(BaseModel):
    """Where an output's bytes are when they are not in `data`."""

    binary_data_size: NonNegative | Absent = Field(
        None,
        description="The output's raw bytes, this many, follow the JSON header (in the order "
        "of `outputs`); the output then has no `data`.",
    )
    shared_memory_region: str | Absent = Field(
        None, description="The region the output was written to, as asked."
    )
    shared_memory_byte_size: NonNegative | Absent = Field(
        None, description="Bytes written to the region."
    )
    shared_memory_offset: NonNegative | Absent = Field(
        None, description="Where in the region, when not 0."
    )


class ResponseOutput(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int]
    parameters: ResponseOutputParameters | Absent = Field(
        None, description="Present only for an output returned as raw bytes or in shared memory."
    )
    data: list[Any] | Absent = Field(
        None,
        description="The elements, flat, in row-major order (absent for an output returned as "
        "raw bytes or in shared memory). "
        "BYTES elements are strings.",
    )


class InferResponse(BaseModel):
    model_name: str
    model_version: str = Field(
        description="The version that answered (the traffic policy's choice when the request "
        "named none)."
    )
    id: str | Absent = Field(None, description="The request's `id`, when it had one.")
    parameters: dict[str, Any] | Absent = None
    outputs: list[ResponseOutput]


# --------------------------------------------------------------- Triton's extensions


class RepositoryIndexRequest(BaseModel):
    """Other fields are ignored."""

    ready: bool = Field(False, description="Only the versions ready to serve.")


class RepositoryIndexEntry(BaseModel):
    name: str
    version: str = Field(description="Empty for a model whose versions could not be listed.")
    state: Literal["LOADING", "READY", "UNLOADING", "UNAVAILABLE"]
    reason: str | Absent = Field(None, description="Why a version is unavailable, when known.")


class LoadParameters(BaseModel):
    config: str | Absent = Field(
        None,
        description="A model configuration as a JSON string (Triton's shape); it replaces the "
        "repository's for this load. `file:` parameters are refused (400).",
    )
    __pydantic_extra__: dict[str, _SCALAR] = Field(init=False)
    model_config = ConfigDict(extra="allow")


class RepositoryLoadRequest(BaseModel):
    parameters: LoadParameters | Absent = None


class RepositoryUnloadRequest(BaseModel):
    parameters: dict[str, _SCALAR] | Absent = Field(
        None, description="Accepted (e.g. `unload_dependents`); modelport has no dependents."
    )


class Empty(BaseModel):
    """`{}`: the change is done."""

    model_config = ConfigDict(extra="forbid")


class Duration(BaseModel):
    count: int = Field(ge=0)
    ns: int = Field(ge=0, description="Cumulative nanoseconds.")


class InferStatistics(BaseModel):
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration
    cache_hit: Duration
    cache_miss: Duration


class BatchStatistics(BaseModel):
    batch_size: int
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


class ModelStatistics(BaseModel):
    name: str
    version: str
    last_inference: int = Field(description="Milliseconds since the epoch; 0 before any.")
    inference_count: int = Field(description="Samples inferred (a batch of n counts n).")
    execution_count: int = Field(
        description="Runtime executions (a batch counts once; an ensemble: each answered request)."
    )
    inference_stats: InferStatistics
    batch_stats: list[BatchStatistics]
    memory_usage: list[dict[str, Any]]


class ModelStatisticsList(BaseModel):
    model_stats: list[ModelStatistics] = Field(
        description="Ordered by model and version; without a model in the path, every ready "
        "version of every model the caller may see."
    )


# ------------------------------------------------------------------------- KServe v1


class V1ModelList(BaseModel):
    models: list[str] = Field(description="Names of the models ready to serve, sorted.")


class V1ModelStatus(BaseModel):
    name: str
    ready: Literal[True]


class V1PredictRequest(BaseModel):
    """`instances` (rows of the model's single input) or `inputs` (rows, or an object mapping
    each input's name to its rows). Each row is a value or a nested list."""

    instances: list[Any] | Absent = None
    inputs: list[Any] | dict[str, list[Any]] | Absent = None


class V1PredictResponse(BaseModel):
    predictions: list[Any] = Field(
        description="One value per row for a single-output model, else one object per row "
        "mapping output names to values."
    )


# ------------------------------------------------------ shared memory, logging


class SharedMemoryRegion(BaseModel):
    name: str = Field(description="The region's name, chosen by the caller when registering.")
    key: str = Field(description="The shared-memory segment's name (as `shm_open` takes it).")
    offset: int = Field(ge=0, description="Where the region starts in the segment.")
    byte_size: int = Field(ge=0, description="The region's size in bytes.")


class SharedMemoryRegister(_Request):
    key: str = Field(description="The shared-memory segment's name (as `shm_open` takes it).")
    offset: NonNegative | Absent = Field(None, description="0 when absent.")
    byte_size: int = Field(gt=0)


class LogSettings(BaseModel):
    """The server's log settings (Triton's shape)."""

    log_file: str = Field(description='Always "": the log goes to stderr.')
    log_info: bool
    log_warnings: bool
    log_errors: bool
    log_verbose_level: int = Field(ge=0)
    log_format: Literal["text", "json"]


class LogSettingsChange(_Request):
    """The settings to change; the others stay. A refused change changes nothing."""

    log_file: Literal[""] | Absent = Field(
        None, description='Only "" (stderr): a caller may not choose a file.'
    )
    log_info: bool | Absent = None
    log_warnings: bool | Absent = None
    log_errors: bool | Absent = None
    log_verbose_level: Annotated[int, Field(ge=0, le=(1 << 32) - 1)] | Absent = None
    log_format: Literal["text", "json", "default", "ISO8601"] | Absent = Field(
        None, description="`default` and `ISO8601` (Triton's) are both text."
    )


SCHEMAS: tuple[type[BaseModel], ...] = (
    InferenceError,
    ServerLive,
    ServerReady,
    ServerMetadata,
    ModelMetadata,
    ModelReady,
    InferRequest,
    InferResponse,
    RepositoryIndexRequest,
    RepositoryIndexEntry,
    RepositoryLoadRequest,
    RepositoryUnloadRequest,
    Empty,
    ModelStatisticsList,
    ModelConfig,
    V1ModelList,
    V1ModelStatus,
    V1PredictRequest,
    V1PredictResponse,
    SharedMemoryRegion,
    SharedMemoryRegister,
    LogSettings,
    LogSettingsChange,
)

#: Request bodies are described as the server validates them, responses as it writes them.
_REQUESTS = {
    InferRequest,
    RepositoryIndexRequest,
    RepositoryLoadRequest,
    RepositoryUnloadRequest,
    V1PredictRequest,
    SharedMemoryRegister,
    LogSettingsChange,
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model: type[BaseModel] | dict[str, Any], description: str) -> dict[str, Any]:
    schema = _ref(model) if isinstance(model, type) else model
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _optional_body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": False, "content": {JSON: {"schema": _ref(model)}}}


def _error(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


#: Reusable error responses, by the status ``transport/http/errors.py`` gives each error.
ERROR_RESPONSES: dict[str, tuple[int, str]] = {
    "BadRequest": (
        400,
        "Malformed or refused request: bad JSON, an unknown field, a wrong datatype or "
        "shape, an unsupported parameter, or a model that failed to load.",
    ),
    "Unauthenticated": (401, "Authentication is on and the request carries no valid credential."),
    "Forbidden": (403, "The caller's role or model scope does not allow this."),
    "NotFound": (404, "Unknown model or version."),
    "Conflict": (409, "In conflict with the current state (see the operation)."),
    "PayloadTooLarge": (
        413,
        "The body is over the server's `max_body_bytes` (1 MiB for repository requests).",
    ),
    "RateLimited": (429, "Over the model's or the caller's rate limit; see `Retry-After`."),
    "ResidencyRefused": (451, "The data's residency does not allow this server's region."),
    "Unavailable": (503, "The model is not ready, or its queue is full."),
    "DeadlineExceeded": (504, "The request's deadline passed before it ran."),
    "InferenceFailed": (500, "The model failed while running the request."),
}


def _error_components() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (status, description) in ERROR_RESPONSES.items():
        response: dict[str, Any] = {
            "description": description,
            "content": {JSON: {"schema": _ref(InferenceError)}},
        }
        if status == 401:
            response["headers"] = {
                "WWW-Authenticate": {
                    "description": 'Always `Bearer realm="modelport"` (RFC 6750).',
                    "schema": {"type": "string"},
                }
            }
        if status == 429:
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds until a request may succeed.",
                    "schema": {"type": "string"},
                }
            }
        out[name] = response
    return out


def _errors(*names: str, guarded: bool = True) -> dict[str, Any]:
    """Error responses of an operation; every guarded route may answer 401 and 403."""
    wanted = (("Unauthenticated", "Forbidden") if guarded else ()) + names
    return {str(ERROR_RESPONSES[n][0]): _error(n) for n in wanted}


MODEL = {
    "name": "model",
    "in": "path",
    "required": True,
    "description": "The model's name, as in the repository.",
    "schema": {"type": "string"},
}
VERSION = {
    "name": "version",
    "in": "path",
    "required": True,
    "description": "A version number; without it, the version served by default "
    "(the highest ready one, or the traffic policy's choice for inference).",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
TIMEOUT = {
    "name": "modelport-timeout-ms",
    "in": "header",
    "required": False,
    "description": "Whole milliseconds the caller waits, from arrival; a request still queued "
    "then is refused with 504.",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
HEADER_LENGTH = {
    "name": "Inference-Header-Content-Length",
    "in": "header",
    "required": False,
    "description": "Binary tensor extension: the length of the JSON header at the start of "
    "the body; the rest is the raw bytes of inputs with `binary_data_size`.",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
CONTENT_ENCODING = {
    "name": "Content-Encoding",
    "in": "header",
    "required": False,
    "description": "`gzip` or `deflate` for a compressed body (any other is refused with 400).",
    "schema": {"type": "string"},
}

_INFER_EXAMPLE = {
    "id": "42",
    "inputs": [
        {"name": "INPUT0", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]},
    ],
    "outputs": [{"name": "OUTPUT0"}],
}

_BINARY_NOTE = (
    "With the binary tensor extension the body is the JSON header (`Inference-Header-Content-"
    "Length` bytes) followed by raw little-endian tensor bytes (BYTES: each element a 4-byte "
    "length then its bytes); the response is binary likewise when outputs are asked for with "
    "`binary_data` or `binary_data_output`, its header length in the response's "
    "`Inference-Header-Content-Length`."
)


def _operation(
    operation_id: str,
    tag: str,
    summary: str,
    responses: dict[str, Any],
    *,
    description: str | None = None,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    open_route: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {"tags": [tag], "summary": summary, "operationId": operation_id}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    op["responses"] = responses
    if open_route:
        op["security"] = []
    return op


def _versioned(path: str, versioned_path: str, operation: dict[str, Any]) -> dict[str, Any]:
    """The same operation on a model's path and on one version's path."""
    other = copy.deepcopy(operation)
    other["operationId"] += "_version"
    other["parameters"] = [MODEL, VERSION, *operation.get("parameters", [])[1:]]
    return {path: operation, versioned_path: other}


def _infer_operation() -> dict[str, Any]:
    return _operation(
        "v2_infer",
        TAG_V2,
        "Run inference",
        {
            "200": {
                "description": "The outputs. " + _BINARY_NOTE,
                "headers": {
                    "Inference-Header-Content-Length": {
                        "description": "Only on a binary response: its JSON header's length.",
                        "schema": {"type": "string"},
                    }
                },
                "content": {
                    JSON: {"schema": _ref(InferResponse)},
                    BINARY: {
                        "schema": {
                            "type": "string",
                            "contentMediaType": BINARY,
                            "description": "An InferResponse JSON header, then the outputs' "
                            "raw bytes.",
                        }
                    },
                },
            },
            **_errors(
                "BadRequest",
                "NotFound",
                "PayloadTooLarge",
                "RateLimited",
                "ResidencyRefused",
                "Unavailable",
                "DeadlineExceeded",
                "InferenceFailed",
            ),
        },
        description="Needs the `invoker` role on the model when authentication is on. "
        "The body is JSON, or, with the binary tensor extension, a JSON header followed by "
        "raw tensor bytes. " + _BINARY_NOTE,
        parameters=[MODEL, TIMEOUT, HEADER_LENGTH, CONTENT_ENCODING],
        body={
            "required": True,
            "content": {
                JSON: {"schema": _ref(InferRequest), "example": _INFER_EXAMPLE},
                BINARY: {
                    "schema": {
                        "type": "string",
                        "contentMediaType": BINARY,
                        "description": "An InferRequest JSON header of "
                        "`Inference-Header-Content-Length` bytes, then the raw bytes of the "
                        "inputs that carry `binary_data_size`, in order.",
                    }
                },
            },
        },
    )


def inference_paths() -> dict[str, dict[str, Any]]:
    """Every REST route of the data plane, keyed by the router's path template."""
    read = "Needs the `viewer` role (on the model, where one is named) when authentication is on."
    metadata = _operation(
        "v2_model_metadata",
        TAG_V2,
        "Model metadata: inputs, outputs, versions",
        {
            "200": _json(ModelMetadata, "The model's metadata."),
            **_errors("NotFound", "Unavailable"),
        },
        description=read,
        parameters=[MODEL],
    )
    ready = _operation(
        "v2_model_ready",
        TAG_V2,
        "Whether a model (version) can serve",
        {
            "200": _json(ModelReady, "Ready."),
            **_errors("NotFound", "Unavailable"),
        },
        description=read,
        parameters=[MODEL],
    )
    stats = _operation(
        "triton_model_statistics",
        TAG_TRITON,
        "Statistics of a model's ready versions",
        {
            "200": _json(ModelStatisticsList, "Counters since each version loaded."),
            **_errors("NotFound"),
        },
        description=read,
        parameters=[MODEL],
    )
    config = _operation(
        "triton_model_config",
        TAG_TRITON,
        "The completed configuration a version was loaded with (Triton's JSON shape)",
        {"200": _json(ModelConfig, "The configuration."), **_errors("NotFound", "Unavailable")},
        description=read,
        parameters=[MODEL],
    )
    body_note = (
        "The body is optional (an empty body is `{}`); at most 1 MiB. Needs the `operator` role "
        "on the model when authentication is on."
    )
    paths: dict[str, dict[str, Any]] = {
        "/v2": {
            "get": _operation(
                "v2_server_metadata",
                TAG_V2,
                "Server metadata",
                {"200": _json(ServerMetadata, "Name, version and extensions.")},
                description="Needs the `viewer` role when authentication is on.",
            )
        },
        "/v2/health/live": {
            "get": _operation(
                "v2_health_live",
                TAG_HEALTH,
                "Liveness",
                {"200": _json(ServerLive, "The server is live.")},
                description="Open to everyone, with or without credentials.",
                open_route=True,
            )
        },
        "/v2/health/ready": {
            "get": _operation(
                "v2_health_ready",
                TAG_HEALTH,
                "Readiness",
                {
                    "200": _json(ServerReady, "Ready to serve."),
                    "503": _json(ServerReady, "Not ready (`ready` is false)."),
                },
                description="Open to everyone, with or without credentials.",
                open_route=True,
            )
        },
        **{
            p: {"get": op}
            for p, op in _versioned(
                "/v2/models/{model}", "/v2/models/{model}/versions/{version}", metadata
            ).items()
        },
        **{
            p: {"get": op}
            for p, op in _versioned(
                "/v2/models/{model}/ready", "/v2/models/{model}/versions/{version}/ready", ready
            ).items()
        },
        **{
            p: {"post": op}
            for p, op in _versioned(
                "/v2/models/{model}/infer",
                "/v2/models/{model}/versions/{version}/infer",
                _infer_operation(),
            ).items()
        },
        "/v2/models/stats": {
            "get": _operation(
                "triton_statistics",
                TAG_TRITON,
                "Statistics of every ready version the caller may see",
                {"200": _json(ModelStatisticsList, "Counters since each version loaded.")},
                description="Needs the `viewer` role when authentication is on; lists only "
                "the models the caller's scope allows.",
            )
        },
        **{
            p: {"get": op}
            for p, op in _versioned(
                "/v2/models/{model}/stats", "/v2/models/{model}/versions/{version}/stats", stats
            ).items()
        },
        **{
            p: {"get": op}
            for p, op in _versioned(
                "/v2/models/{model}/config", "/v2/models/{model}/versions/{version}/config", config
            ).items()
        },
        "/v2/repository/index": {
            "post": _operation(
                "triton_repository_index",
                TAG_TRITON,
                "Every model version of the repository, with its state",
                {
                    "200": _json(
                        {"type": "array", "items": _ref(RepositoryIndexEntry)},
                        "The versions the caller may see.",
                    ),
                    **_errors("BadRequest", "PayloadTooLarge"),
                },
                description="The body is optional (an empty body is `{}`). Needs the "
                "`viewer` role when authentication is on; lists only the models the "
                "caller's scope allows.",
                body=_optional_body(RepositoryIndexRequest),
            )
        },
        "/v2/repository/models/{model}/load": {
            "post": _operation(
                "triton_repository_load",
                TAG_TRITON,
                "Load (or reload) a model",
                {
                    "200": _json(Empty, "Loaded."),
                    **_errors("BadRequest", "NotFound", "PayloadTooLarge"),
                },
                description=body_note,
                parameters=[MODEL],
                body=_optional_body(RepositoryLoadRequest),
            )
        },
        "/v2/repository/models/{model}/unload": {
            "post": _operation(
                "triton_repository_unload",
                TAG_TRITON,
                "Unload a model (refused while a traffic policy or canary uses it)",
                {
                    "200": _json(Empty, "Unloaded."),
                    **_errors("BadRequest", "NotFound", "Conflict", "PayloadTooLarge"),
                },
                description=body_note,
                parameters=[MODEL],
                body=_optional_body(RepositoryUnloadRequest),
            )
        },
        "/v1/models": {
            "get": _operation(
                "v1_list_models",
                TAG_V1,
                "Names of the models ready to serve",
                {"200": _json(V1ModelList, "The models the caller may see.")},
                description="Needs the `viewer` role when authentication is on.",
            )
        },
        "/v1/models/{model}": {
            "get": _operation(
                "v1_model_status",
                TAG_V1,
                "Whether a model is ready",
                {"200": _json(V1ModelStatus, "Ready."), **_errors("NotFound", "Unavailable")},
                description=read,
                parameters=[MODEL],
            )
        },
        "/v1/models/{model}:predict": {
            "post": _operation(
                "v1_predict",
                TAG_V1,
                "Predict (KServe v1)",
                {
                    "200": _json(V1PredictResponse, "The predictions, one per row."),
                    **_errors(
                        "BadRequest",
                        "NotFound",
                        "PayloadTooLarge",
                        "RateLimited",
                        "ResidencyRefused",
                        "Unavailable",
                        "DeadlineExceeded",
                        "InferenceFailed",
                    ),
                },
                description="Needs the `invoker` role on the model when authentication is on. "
                "The traffic policy, if any, picks the version.",
                parameters=[MODEL, TIMEOUT, CONTENT_ENCODING],
                body={
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": _ref(V1PredictRequest),
                            "example": {"instances": [[1.0, 2.0, 3.0]]},
                        }
                    },
                },
            )
        },
        **_shared_memory_paths(),
        **_logging_paths(),
        **_generate_paths(),
        "/metrics": {
            "get": _operation(
                "metrics",
                TAG_METRICS,
                "Prometheus metrics",
                {
                    "200": {
                        "description": "Prometheus' text format: the server-wide series and "
                        "those of the models the caller may see.",
                        "content": {METRICS_TYPE: {"schema": {"type": "string"}}},
                    },
                    **_errors(),
                },
                description="Needs the `viewer` role when authentication is on (also served "
                "on `--metrics-port`).",
            )
        },
    }
    return paths


REGION = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "The region's name.",
    "schema": {"type": "string"},
}


def _shared_memory_paths() -> dict[str, dict[str, Any]]:
    """Triton's system shared-memory extension; the CUDA one answers 400."""
    own = (
        "Needs the `invoker` role when authentication is on; each caller sees and acts on "
        "its own regions only."
    )
    regions = {"type": "array", "items": _ref(SharedMemoryRegion)}
    status = _operation(
        "shm_status",
        TAG_SHM,
        "The caller's registered regions",
        {"200": _json(regions, "The regions.")},
        description=own,
    )
    one_status = copy.deepcopy(status)
    one_status.update(
        operationId="shm_region_status",
        summary="One registered region",
        parameters=[REGION],
        responses={
            "200": _json(regions, "The region, alone in the list."),
            **_errors("NotFound"),
        },
    )
    unregister = _operation(
        "shm_unregister",
        TAG_SHM,
        "Unregister every region of the caller",
        {"200": _json(Empty, "Unregistered."), **_errors("BadRequest", "PayloadTooLarge")},
        description=own + " The body is optional (`{}`).",
    )
    one_unregister = copy.deepcopy(unregister)
    one_unregister.update(
        operationId="shm_region_unregister",
        summary="Unregister one region",
        parameters=[REGION],
        responses={
            "200": _json(Empty, "Unregistered."),
            **_errors("BadRequest", "NotFound", "PayloadTooLarge"),
        },
    )
    register = _operation(
        "shm_region_register",
        TAG_SHM,
        "Register a region of a shared-memory segment",
        {
            "200": _json(Empty, "Registered."),
            **_errors("BadRequest", "Conflict", "PayloadTooLarge"),
        },
        description=own + " 409 when the caller has a region of that name already.",
        parameters=[REGION],
        body={"required": True, "content": {JSON: {"schema": _ref(SharedMemoryRegister)}}},
    )
    system = "/v2/systemsharedmemory"
    paths: dict[str, dict[str, Any]] = {
        f"{system}/status": {"get": status},
        f"{system}/region/{{name}}/status": {"get": one_status},
        f"{system}/region/{{name}}/register": {"post": register},
        f"{system}/unregister": {"post": unregister},
        f"{system}/region/{{name}}/unregister": {"post": one_unregister},
    }
    cuda = "/v2/cudasharedmemory"
    for path, method, suffix in (
        ("/status", "get", "status"),
        ("/region/{name}/status", "get", "region_status"),
        ("/region/{name}/register", "post", "region_register"),
        ("/unregister", "post", "unregister"),
        ("/region/{name}/unregister", "post", "region_unregister"),
    ):
        paths[cuda + path] = {
            method: _operation(
                f"cuda_shm_{suffix}",
                TAG_SHM,
                "CUDA shared memory: not supported (400)",
                _errors("BadRequest"),
                description="Needs the `invoker` role when authentication is on; always 400.",
                parameters=[REGION] if "{name}" in path else None,
            )
        }
    return paths


def _logging_paths() -> dict[str, dict[str, Any]]:
    return {
        "/v2/logging": {
            "get": _operation(
                "triton_logging",
                TAG_TRITON,
                "The log settings",
                {"200": _json(LogSettings, "The settings.")},
                description="Needs the `viewer` role when authentication is on.",
            ),
            "post": _operation(
                "triton_logging_update",
                TAG_TRITON,
                "Change log settings",
                {
                    "200": _json(LogSettings, "All the settings, as changed."),
                    **_errors("BadRequest", "PayloadTooLarge"),
                },
                description="Needs the `operator` role when authentication is on. Each "
                "change is recorded in the history.",
                body={"required": False, "content": {JSON: {"schema": _ref(LogSettingsChange)}}},
            ),
        }
    }


def _generate_paths() -> dict[str, dict[str, Any]]:
    """Triton's generate extension (docs/streaming.md)."""
    body = {
        "required": True,
        "content": {
            JSON: {
                "schema": {
                    "type": "object",
                    "description": "The model's inputs as fields by name (a scalar or a list), "
                    "`parameters` and any other field as request parameters.",
                    "properties": {"parameters": {"type": "object"}},
                    "additionalProperties": True,
                },
                "example": {"text_input": "Hello", "parameters": {"max_tokens": 8}},
            }
        },
    }
    answer = {
        "type": "object",
        "description": "The outputs as fields by name (one element as a scalar, BYTES as text).",
        "required": ["model_name", "model_version"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
        },
        "additionalProperties": True,
    }
    errors = _errors(
        "BadRequest",
        "NotFound",
        "PayloadTooLarge",
        "RateLimited",
        "ResidencyRefused",
        "Unavailable",
        "DeadlineExceeded",
        "InferenceFailed",
    )
    role = "Needs the `invoker` role on the model when authentication is on. "
    generate = _operation(
        "v2_generate",
        TAG_V2,
        "Generate: one JSON object in, one out",
        {
            "200": {
                "description": "The one response.",
                "content": {JSON: {"schema": answer}},
            },
            **errors,
        },
        description=role + "A decoupled model must answer with exactly one response here.",
        parameters=[MODEL, TIMEOUT, CONTENT_ENCODING],
        body=body,
    )
    stream = _operation(
        "v2_generate_stream",
        TAG_V2,
        "Generate, streaming each response as a server-sent event",
        {
            "200": {
                "description": "One `data: {json}` event per response; an error after the "
                'first event is a last `data: {"error": ...}` event.',
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **errors,
        },
        description=role + "A decoupled model's responses arrive as the model yields them.",
        parameters=[MODEL, TIMEOUT, CONTENT_ENCODING],
        body=body,
    )
    paths: dict[str, dict[str, Any]] = {}
    for name, op in (("generate", generate), ("generate_stream", stream)):
        for path, each in _versioned(
            f"/v2/models/{{model}}/{name}",
            f"/v2/models/{{model}}/versions/{{version}}/{name}",
            op,
        ).items():
            paths[path] = {"post": each}
    return paths


def inference_schemas() -> dict[str, Any]:
    """``components.schemas`` of the data plane, from the pydantic models above."""
    _, top = models_json_schema(
        [(m, "validation" if m in _REQUESTS else "serialization") for m in SCHEMAS],
        ref_template=REF,
    )
    defs: dict[str, Any] = _without_null_defaults(top.get("$defs", {}))
    return defs


def _without_null_defaults(node: Any) -> Any:
    """Drop ``"default": null``: an optional field is simply absent, not null."""
    if isinstance(node, dict):
        return {
            k: _without_null_defaults(v)
            for k, v in node.items()
            if not (k == "default" and v is None)
        }
    if isinstance(node, list):
        return [_without_null_defaults(v) for v in node]
    return node


TAGS = [
    {"name": TAG_HEALTH, "description": "Liveness and readiness probes, open to everyone."},
    {
        "name": TAG_V2,
        "description": "The Open Inference Protocol (KServe v2) over REST: metadata, readiness "
        "and inference, JSON or with Triton's binary tensor extension.",
    },
    {
        "name": TAG_TRITON,
        "description": "Triton's model repository, model configuration and statistics extensions.",
    },
    {
        "name": TAG_SHM,
        "description": "Triton's system shared-memory extension: tensors in regions of "
        "shared-memory segments on this host, registered by the caller.",
    },
    {"name": TAG_V1, "description": "KServe's V1 protocol, for clients written for it."},
    {"name": TAG_METRICS, "description": "Prometheus metrics."},
    {
        "name": TAG_MANAGEMENT,
        "description": "Versions, traffic policies, canaries and history (its own document: "
        "`/api/v1/openapi.json`). Errors carry a machine-readable `code` besides `error`.",
    },
]

DESCRIPTION = """\
Every REST route of modelport: the Open Inference Protocol (`/v2`), Triton's \
extensions (repository, configuration, statistics, logging, shared memory), \
KServe v1 (`/v1`), `/metrics` and the management API (`/api/v1`).

Errors are `{"error": "..."}` (the management API adds a `code`). A path no route \
serves answers 404, a method a path does not take 405, both in that shape; a request \
head or body too slow answers 408, headers too large 431.

With authentication on, every route but the health probes needs a credential: \
`Authorization: Bearer <key or token>` (use **Authorize**), or a client certificate. \
Without one the answer is 401, with too small a role or another model's scope 403.
"""


def combined_document(management: dict[str, Any], version: str) -> dict[str, Any]:
    """One OpenAPI 3.1 document: the data plane's routes and the management API's.

    ``management`` is the management API's own document (FastAPI's, paths
    relative to ``/api/v1``); its paths are prefixed and its components merged.
    """
    components: dict[str, Any] = {
        "schemas": inference_schemas(),
        "responses": _error_components(),
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key or a JWT; only when authentication is on.",
            }
        },
    }
    for kind, entries in management.get("components", {}).items():
        merged = components.setdefault(kind, {})
        clash = sorted(set(merged) & set(entries))
        if clash:
            raise ValueError(f"components.{kind} named by both documents: {clash}")
        merged.update(copy.deepcopy(entries))
    paths = inference_paths()
    for path, original in management.get("paths", {}).items():
        item = copy.deepcopy(original)
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["tags"] = [TAG_MANAGEMENT, *operation.get("tags", [])]
        paths[MANAGEMENT_PREFIX + path] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": "modelport", "version": version, "description": DESCRIPTION},
        "tags": TAGS,
        # Credentials are optional: they are needed only when authentication is on.
        "security": [{}, {"bearer": []}],
        "paths": paths,
        "components": components,
    }


__all__ = [
    "MANAGEMENT_PREFIX",
    "SCHEMAS",
    "combined_document",
    "inference_paths",
    "inference_schemas",
]
