"""Triton's model configuration as a validated object.

One object, three syntaxes: ``config.yaml``, Triton's ``config.pbtxt`` and
the JSON of ``GET /v2/models/{m}/config``. Field names, shapes and enum names
are Triton's; whatever modelport adds lives in the ``modelport:`` block, so
unknown top-level keys are errors rather than silently ignored.

Sections that modelport reads today are typed closely; Triton sections it
accepts but does not act on yet (batch inputs, model operations ...) are kept
as plain mappings so an existing Triton repository still loads.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from modelport.errors import ConfigError
from modelport.types import CONFIG_TYPES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Open(BaseModel):
    """A Triton section whose sub-fields modelport passes through untouched."""

    model_config = ConfigDict(extra="allow", frozen=True)


def _check_data_type(value: str) -> str:
    if value not in CONFIG_TYPES:
        names = ", ".join(sorted(CONFIG_TYPES))
        raise ValueError(f"unknown data_type {value!r}; expected one of {names}")
    return value


def _check_dims(dims: list[int]) -> list[int]:
    for d in dims:
        if d < -1 or d == 0:
            raise ValueError(f"dims must be positive or -1 (any size), got {d}")
    return dims


class TensorReshape(_Strict):
    shape: list[int] = Field(default_factory=list)


class ModelInput(_Strict):
    name: str
    data_type: str
    format: str = "FORMAT_NONE"
    dims: list[int]
    reshape: TensorReshape | None = None
    is_shape_tensor: bool = False
    is_non_linear_format_io: bool = False
    allow_ragged_batch: bool = False
    optional: bool = False

    _dt = field_validator("data_type")(_check_data_type)
    _dims = field_validator("dims")(_check_dims)


class ModelOutput(_Strict):
    name: str
    data_type: str
    dims: list[int]
    reshape: TensorReshape | None = None
    label_filename: str = ""
    is_shape_tensor: bool = False
    is_non_linear_format_io: bool = False

    _dt = field_validator("data_type")(_check_data_type)
    _dims = field_validator("dims")(_check_dims)


class LatestPolicy(_Strict):
    num_versions: int = Field(default=1, ge=1)


class SpecificPolicy(_Strict):
    versions: list[int] = Field(min_length=1)

    @field_validator("versions")
    @classmethod
    def _positive(cls, versions: list[int]) -> list[int]:
        if any(v < 1 for v in versions):
            raise ValueError("versions are positive integers")
        return versions


class VersionPolicy(_Strict):
    """Exactly one of latest, all, specific; none given means latest 1."""

    latest: LatestPolicy | None = None
    all: dict[str, Any] | None = None
    specific: SpecificPolicy | None = None

    def model_post_init(self, __context: Any) -> None:
        chosen = [k for k in ("latest", "all", "specific") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"choose one of latest, all, specific (got {', '.join(chosen)})")

    def select(self, available: list[int]) -> list[int]:
        """The versions this policy serves out of those on disk, ascending."""
        ordered = sorted(available)
        if self.all is not None:
            return ordered
        if self.specific is not None:
            wanted = set(self.specific.versions)
            return [v for v in ordered if v in wanted]
        n = self.latest.num_versions if self.latest is not None else 1
        return ordered[-n:]


class InstanceGroup(_Strict):
    name: str = ""
    kind: Literal["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"] = "KIND_AUTO"
    count: int = Field(default=1, ge=1, le=256)
    gpus: list[int] = Field(default_factory=list)
    secondary_devices: list[dict[str, Any]] = Field(default_factory=list)
    profile: list[str] = Field(default_factory=list)
    passive: bool = False
    host_policy: str = ""
    rate_limiter: dict[str, Any] | None = None


class QueuePolicy(_Strict):
    timeout_action: Literal["REJECT", "DELAY"] = "REJECT"
    default_timeout_microseconds: int = Field(default=0, ge=0)
    allow_timeout_override: bool = False
    max_queue_size: int = Field(default=0, ge=0)


class DynamicBatching(_Strict):
    preferred_batch_size: list[int] = Field(default_factory=list)
    max_queue_delay_microseconds: int = Field(default=0, ge=0)
    preserve_ordering: bool = False
    priority_levels: int = Field(default=0, ge=0)
    default_priority_level: int = Field(default=0, ge=0)
    default_queue_policy: QueuePolicy | None = None
    priority_queue_policy: dict[int, QueuePolicy] = Field(default_factory=dict)


#: Triton's control kinds: what the sequence batcher tells the model through a control input.
ControlKind = Literal[
    "CONTROL_SEQUENCE_START",
    "CONTROL_SEQUENCE_READY",
    "CONTROL_SEQUENCE_END",
    "CONTROL_SEQUENCE_CORRID",
]

#: Datatypes a CONTROL_SEQUENCE_CORRID input may have (Triton's).
CORRID_TYPES = ("TYPE_INT32", "TYPE_INT64", "TYPE_UINT32", "TYPE_UINT64", "TYPE_STRING")


class SequenceControl(_Strict):
    """One signal the sequence batcher writes into a control input (Triton's ``Control``).

    START, READY and END give their [false, true] values in exactly one of the
    ``*_false_true`` pairs, whose type is the tensor's (INT32, FP32, BOOL);
    CORRID gives the tensor's ``data_type`` instead. Protobuf omits an enum at
    its default, so a pbtxt control without ``kind`` is a START control.
    """

    kind: ControlKind = "CONTROL_SEQUENCE_START"
    int32_false_true: list[int] = Field(default_factory=list)
    fp32_false_true: list[float] = Field(default_factory=list)
    bool_false_true: list[bool] = Field(default_factory=list)
    data_type: str = "TYPE_INVALID"

    def model_post_init(self, __context: Any) -> None:
        pairs = [
            name
            for name in ("int32_false_true", "fp32_false_true", "bool_false_true")
            if getattr(self, name)
        ]
        if self.kind == "CONTROL_SEQUENCE_CORRID":
            if pairs:
                raise ValueError(f"a CORRID control takes data_type, not {pairs[0]}")
            if self.data_type not in CORRID_TYPES:
                raise ValueError(
                    f"a CORRID control needs data_type {', '.join(CORRID_TYPES)}; "
                    f"got {self.data_type}"
                )
            return
        if len(pairs) != 1:
            raise ValueError(
                f"{self.kind} needs exactly one of int32_false_true, fp32_false_true, "
                f"bool_false_true (got {len(pairs)})"
            )
        if len(getattr(self, pairs[0])) != 2:
            raise ValueError(f"{pairs[0]} holds two values: [false, true]")
        if self.data_type != "TYPE_INVALID":
            raise ValueError(f"{self.kind} takes its type from {pairs[0]}, not data_type")


class ControlInput(_Strict):
    """A model input the sequence batcher fills; clients never send it."""

    name: str
    control: list[SequenceControl] = Field(min_length=1, max_length=1)


class InitialState(_Strict):
    """The value a sequence's implicit state starts from (zeros when none is given)."""

    data_type: str = "TYPE_INVALID"
    dims: list[int] = Field(default_factory=list)
    zero_data: bool = False
    data_file: str = ""
    name: str = ""


class SequenceState(_Strict):
    """Implicit state: ``output_name`` of one request is fed as ``input_name`` of the next."""

    input_name: str
    output_name: str
    data_type: str
    dims: list[int]
    initial_state: list[InitialState] = Field(default_factory=list, max_length=1)
    use_same_buffer_for_input_output: bool = False
    use_growable_memory: bool = False

    _dt = field_validator("data_type")(_check_data_type)
    _dims = field_validator("dims")(_check_dims)


class StrategyDirect(_Strict):
    max_queue_delay_microseconds: int = Field(default=0, ge=0)
    minimum_slot_utilization: float = Field(default=0.0, ge=0, le=1)


class StrategyOldest(_Strict):
    max_candidate_sequences: int = Field(default=0, ge=0)
    preferred_batch_size: list[int] = Field(default_factory=list)
    max_queue_delay_microseconds: int = Field(default=0, ge=0)
    preserve_ordering: bool = False


class SequenceBatching(_Strict):
    """Triton's ``sequence_batching``: stateful models whose requests carry a sequence id.

    Neither strategy given means ``direct`` (Triton's default).
    """

    max_sequence_idle_microseconds: int = Field(default=0, ge=0)
    """A sequence with no request for this long is ended and its slot freed; 0 is 1 s."""
    control_input: list[ControlInput] = Field(default_factory=list)
    direct: StrategyDirect | None = None
    oldest: StrategyOldest | None = None
    state: list[SequenceState] = Field(default_factory=list)
    iterative_sequence: bool = False

    def model_post_init(self, __context: Any) -> None:
        if self.direct is not None and self.oldest is not None:
            raise ValueError("choose one strategy: direct or oldest")


class Accelerator(_Strict):
    name: str
    parameters: dict[str, str] = Field(default_factory=dict)


class ExecutionAccelerators(_Strict):
    gpu_execution_accelerator: list[Accelerator] = Field(default_factory=list)
    cpu_execution_accelerator: list[Accelerator] = Field(default_factory=list)


class GraphOptimization(_Strict):
    level: int = 0


class Optimization(_Open):
    graph: GraphOptimization | None = None
    priority: str | None = None
    execution_accelerators: ExecutionAccelerators | None = None


class Parameter(_Strict):
    string_value: str


class ResponseCache(_Strict):
    enable: bool = False


class TransactionPolicy(_Strict):
    """Triton's ``model_transaction_policy``: whether a request may get many responses."""

    decoupled: bool = False
    """The model answers each request with a stream: zero, one or many responses
    (docs/streaming.md); served over gRPC's ModelStreamInfer and REST's generate_stream."""


class RateLimit(_Strict):
    """A token bucket for one model, shared by all its versions (and, with Redis, all nodes)."""

    rate: float = Field(gt=0, allow_inf_nan=False)
    """Requests per second the bucket refills; fractions allowed (0.5 is one every 2 s)."""
    burst: int = Field(ge=1)
    """Requests that may arrive at once after a quiet spell (the bucket's size)."""


class PayloadLog(_Strict):
    """Sampled inputs and outputs written to a local JSON-lines file, redacted first."""

    enabled: bool = False
    """Off unless asked for: payloads are personal data until proven otherwise."""
    sample: float = Field(default=0.1, ge=0, le=1, allow_inf_nan=False)
    """Fraction of requests logged; the draw comes first, so unsampled requests cost nothing."""
    redact_fields: list[str] = Field(default_factory=list)
    """Parameter and tensor names (any case) whose whole value is withheld as [REDACTED]."""
    retention_days: int = Field(default=30, ge=1, le=36500)
    """Day files older than this many days are deleted."""
    include_outputs: bool = True
    """Log the outputs as well as the inputs."""
    max_bytes_per_record: int = Field(default=65536, ge=1024, le=16 << 20)
    """Longest record line; tensor data is cut short first to stay under it."""
    seal: bool = False
    """Encrypt each record (AES-256-GCM) under the server's master key; without a key
    configured, this model's payloads are not logged at all."""


class Autoscaling(_Strict):
    """Instance count that follows the version's load, between two bounds."""

    min_instances: int = Field(default=1, ge=0, le=1024)
    """Fewest instances; 0 lets the version unload when idle and load again on demand."""
    max_instances: int = Field(default=1, ge=1, le=1024)
    """Most instances."""
    target_in_flight_per_instance: float = Field(default=2.0, gt=0, allow_inf_nan=False)
    """Requests queued or computing per instance that the count aims at."""
    upscale_delay_s: float = Field(default=3.0, ge=0, allow_inf_nan=False)
    """Seconds of sustained overload before instances are added."""
    downscale_delay_s: float = Field(default=60.0, ge=0, allow_inf_nan=False)
    """Seconds of sustained underload before instances are removed; also the least
    time between two changes under steady load."""

    @model_validator(mode="after")
    def _check_bounds(self) -> Autoscaling:
        if self.min_instances > self.max_instances:
            raise ValueError(
                f"min_instances ({self.min_instances}) is more than "
                f"max_instances ({self.max_instances})"
            )
        return self


def _check_residency(entries: list[str]) -> list[str]:
    for entry in entries:
        if not re.fullmatch(r"[a-z]{2,}(?:-[a-z0-9]+)*", entry):
            raise ValueError(
                f"residency entry {entry!r} is not a jurisdiction (e.g. 'ae') "
                "or a region (e.g. 'ae-dxb-1')"
            )
    return entries


#: A rule's tests on a tensor, each applied to every row (the whole tensor when unbatched):
#: its largest or smallest value against a bound, or whether all or any of its values are
#: true (non-zero).
TENSOR_TESTS = ("max_at_least", "max_at_most", "min_at_least", "min_at_most", "all", "any")

#: A rule's tests on a request parameter (an absent parameter equals nothing).
PARAMETER_TESTS = ("equals", "not_equals", "one_of")

#: A parameter value as the protocols carry it.
ParameterValue = bool | int | float | str


class Rule(_Strict):
    """One condition: on a tensor (``output``) or a request parameter (``parameter``).

    Exactly one subject and exactly one test, e.g. ``{output: score,
    max_at_least: 0.5}`` or ``{parameter: mode, equals: full}``; the rules
    module (``dataplane/rules.py``) evaluates it.
    """

    output: str | None = None
    """A tensor: in an ensemble, an ensemble tensor an earlier step gives (or an input);
    in a cascade's ``accept``, an output of that stage's model."""
    parameter: str | None = None
    """A request parameter, by name."""
    max_at_least: float | None = Field(default=None, allow_inf_nan=False)
    max_at_most: float | None = Field(default=None, allow_inf_nan=False)
    min_at_least: float | None = Field(default=None, allow_inf_nan=False)
    min_at_most: float | None = Field(default=None, allow_inf_nan=False)
    all: bool | None = None
    """true: every value is non-zero; false: every value is zero."""
    any: bool | None = None
    """true: some value is non-zero; false: some value is zero."""
    equals: ParameterValue | None = None
    not_equals: ParameterValue | None = None
    one_of: list[ParameterValue] | None = None

    @model_validator(mode="after")
    def _one_subject_one_test(self) -> Rule:
        if (self.output is None) == (self.parameter is None):
            raise ValueError("a rule names exactly one of output or parameter")
        tests = [k for k in (*TENSOR_TESTS, *PARAMETER_TESTS) if getattr(self, k) is not None]
        if len(tests) != 1:
            names = ", ".join(TENSOR_TESTS if self.output is not None else PARAMETER_TESTS)
            raise ValueError(f"a rule has exactly one test ({names}); got {len(tests)}")
        allowed = TENSOR_TESTS if self.output is not None else PARAMETER_TESTS
        if tests[0] not in allowed:
            subject = "an output" if self.output is not None else "a parameter"
            raise ValueError(f"{tests[0]} is not a test on {subject} ({', '.join(allowed)})")
        return self

    @property
    def test(self) -> tuple[str, Any]:
        """The one test: its name and operand."""
        for key in (*TENSOR_TESTS, *PARAMETER_TESTS):
            value = getattr(self, key)
            if value is not None:
                return key, value
        raise AssertionError("validated to have one test")


class StepControl(_Strict):
    """How a composite calls one of its steps (an ensemble step, a cascade stage)."""

    timeout_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Each call of the step fails with DeadlineExceeded after this many seconds."""
    retries: int = Field(default=0, ge=0, le=10)
    """Calls again after a transient failure (Unavailable, DeadlineExceeded), never
    after a request the model refused; jittered exponential backoff between them."""
    retry_backoff_s: float = Field(default=0.05, gt=0, le=10, allow_inf_nan=False)
    """The first backoff's upper bound; it doubles with each retry."""
    max_inflight: int | None = Field(default=None, ge=1)
    """At most this many calls of the step at once, over all the composite's requests."""
    optional: bool = False
    """A failure leaves the step's outputs out (ensemble) or goes on to the next stage
    (cascade) instead of failing the request."""


class StepOptions(StepControl):
    """modelport's options for one ensemble step."""

    when: Rule | None = None
    """The step runs only when this holds (for every row); otherwise it is skipped, and
    so are the steps that need its outputs."""


class CascadeStage(StepControl):
    """One stage of a cascade: a model that answers when its ``accept`` rule holds."""

    model: str = Field(min_length=1)
    version: int = Field(default=-1, ge=-1)
    """-1: the version the model's routing picks."""
    name: str = ""
    """The stage's name in responses and metrics; the model's name when empty."""
    accept: Rule | None = None
    """When this stage's answer stands; none on the last stage (it always answers)."""


class Cascade(_Strict):
    """Stages tried in order; the first sure of its answer answers."""

    stages: list[CascadeStage] = Field(min_length=2)
    per_row: bool = False
    """Judge each row on its own: the rows a stage is unsure of go on to the next stage
    as one smaller batch, and the answer is put back together in row order."""


class ModelportOptions(_Strict):
    """modelport's own additions to a model's configuration."""

    description: str = ""
    batching: bool = True
    """Batch queued requests greedily when max_batch_size > 0, even without a
    ``dynamic_batching`` section; false runs every request on its own."""
    batch_key: str | None = None
    """A request parameter whose differing values never share a batch."""
    allow_unsafe_pickle: bool = False
    """Load pickle/joblib model files, which runs code from the file; skops is the safe format."""
    method: str | None = None
    """Which method of a scikit-learn model answers: predict, predict_proba or transform."""
    instance_process: bool = False
    """Run each instance in a worker process of its own, for models that hold the GIL
    (python models, per-row scikit-learn work); tensors pass through shared memory."""
    instance_timeout_s: float | None = Field(default=None, gt=0)
    """With instance_process: a batch running longer than this kills and restarts its
    worker, and the batch's callers get 503."""
    inline_max_us: int = Field(default=200, ge=0, le=10_000)
    """A lone request on an idle version computes on the event loop itself when the
    version's recent executions all took under this many microseconds (ONNX Runtime and
    OpenVINO only): two thread hand-offs cost more than such a model. 0 turns it off."""
    inline_busy_max_us: int = Field(default=200, ge=0, le=10_000)
    """Under load too, whole batches compute on the event loop while all but a few of the
    version's recent executions cost under this many microseconds: handing each batch to
    an instance thread and back costs the loop more than computing it. 0 keeps them on
    the instances."""
    pin_instances: bool = True
    """Pin each instance thread whose executions take a millisecond of CPU or more to a core
    no other pinned thread holds (ONNX Runtime with one intra-op thread per instance);
    false leaves every thread to the operating system's scheduler."""
    rate_limit: RateLimit | None = None
    """Requests per second this model accepts, over and above which callers get 429
    (gRPC RESOURCE_EXHAUSTED); None is unlimited."""
    payload_log: PayloadLog | None = None
    """Sampled, redacted payload logging; None (or enabled: false) logs nothing."""
    residency: list[str] = Field(default_factory=list)
    """Jurisdictions (``ae``) or regions (``ae-dxb-1``) where this model's data may be
    processed and logged; empty is anywhere."""
    idle_unload_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """A version with no request for this many seconds is unloaded, and loaded again by
    the next request for it; None uses the server's --idle-unload (off unless set)."""
    keep_loaded: bool = False
    """Never unload this model's versions for idleness or to make room in the memory
    budget."""
    autoscaling: Autoscaling | None = None
    """Instance count that follows load; None keeps instance_group's count."""
    steps: dict[str, StepOptions] = Field(default_factory=dict)
    """An ensemble's per-step options, by the step's model name (or its index in
    ``ensemble_scheduling.step`` when the model is a step twice)."""
    cascade: Cascade | None = None
    """Makes the model a cascade of other models (no model file of its own)."""

    _residency = field_validator("residency")(_check_residency)


class EnsembleStep(_Strict):
    """One step of Triton's ``ensemble_scheduling``: a model and how its tensors connect.

    ``input_map`` maps each of the model's inputs to the ensemble tensor it
    takes; ``output_map`` each of its outputs to the ensemble tensor it gives.
    """

    model_name: str = Field(min_length=1)
    model_version: int = Field(default=-1, ge=-1)
    """-1 is Triton's "latest": the version the model's routing picks."""
    input_map: dict[str, str] = Field(default_factory=dict)
    output_map: dict[str, str] = Field(default_factory=dict)
    model_namespace: str = ""
    """Triton's repository namespaces; modelport serves one repository (empty only)."""


class EnsembleScheduling(_Strict):
    """Triton's ``ensemble_scheduling``: the steps of an ensemble (``platform: ensemble``).

    Steps run as soon as their inputs exist, not in the order written.
    """

    step: list[EnsembleStep] = Field(default_factory=list)
    max_inflight_requests: int = Field(default=0, ge=0)
    """Triton's backpressure between steps; accepted, not acted on."""


class ModelConfig(_Strict):
    """A model's configuration in Triton's schema plus the ``modelport`` block."""

    name: str = ""
    platform: str = ""
    backend: str = ""
    runtime: str = ""
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    max_batch_size: int = Field(default=0, ge=0, le=1 << 20)
    input: list[ModelInput] = Field(default_factory=list)
    output: list[ModelOutput] = Field(default_factory=list)
    batch_input: list[dict[str, Any]] = Field(default_factory=list)
    batch_output: list[dict[str, Any]] = Field(default_factory=list)
    optimization: Optimization | None = None
    dynamic_batching: DynamicBatching | None = None
    sequence_batching: SequenceBatching | None = None
    ensemble_scheduling: EnsembleScheduling | None = None
    instance_group: list[InstanceGroup] = Field(default_factory=list)
    default_model_filename: str = ""
    cc_model_filenames: dict[str, str] = Field(default_factory=dict)
    metric_tags: dict[str, str] = Field(default_factory=dict)
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    model_warmup: list[dict[str, Any]] = Field(default_factory=list)
    model_operations: dict[str, Any] | None = None
    model_transaction_policy: TransactionPolicy | None = None
    model_repository_agents: dict[str, Any] | None = None
    response_cache: ResponseCache | None = None
    modelport: ModelportOptions = Field(default_factory=ModelportOptions)

    @property
    def decoupled(self) -> bool:
        """Whether ``model_transaction_policy.decoupled`` is set: the model streams."""
        policy = self.model_transaction_policy
        return policy is not None and policy.decoupled

    def parameter(self, key: str) -> str | None:
        """A Triton ``parameters`` string value, or None when not set."""
        p = self.parameters.get(key)
        return p.string_value if p is not None else None

    def to_json(self) -> dict[str, Any]:
        """The object ``GET /v2/models/{m}/config`` returns (Triton's shape)."""
        data = self.model_dump(mode="json", exclude_none=True)
        for key in (
            "sequence_batching",
            "ensemble_scheduling",
            "dynamic_batching",
            "response_cache",
            "optimization",
            "model_operations",
            "model_transaction_policy",
            "model_repository_agents",
        ):
            if data.get(key) is None:
                data.pop(key, None)
        return data


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_model_config(data: Any, source: str) -> ModelConfig:
    """Validate a config mapping; errors name ``source`` and the first bad field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, "", "expected a mapping of Triton model configuration fields")
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(p for p in first["loc"] if not str(p).startswith("function-"))
        problem = first["msg"]
        if first["type"] == "extra_forbidden":
            problem = (
                "unknown field (Triton's field names only; modelport's own "
                "settings go in the 'modelport:' block)"
            )
        raise ConfigError(source, _field_path(loc), problem) from None
