"""What a load request's config may change: serving knobs, and nothing else.

Triton's repository load takes a whole model config (the ``config``
parameter) that replaces the one on disk. An operator allowed to load one
model must not use it to widen what loading may do (another file, backend or
library), to weaken a protection the repository's owner set (payload
redaction and sealing, a rate limit, residency, the tenant), or to change
what the model is (sequences, ensembles). So the rule is an allow-list: the
fields below tune how the model is served and a load request may set them;
every other field comes from the repository's own config. An override that
gives such a field another value is refused (400 / INVALID_ARGUMENT) with
the field named; leaving it out, or repeating the repository's value, is
fine, so a config read from ``GET /v2/models/{m}/config``, edited and sent
back still loads.

Worked example: the repository's config logs payloads with ``redact_fields:
[card]``. ``{"max_batch_size": 8}`` loads with max_batch_size 8 and the same
payload log; ``{"max_batch_size": 8, "modelport": {"payload_log": {...,
"redact_fields": []}}}`` is refused naming ``'modelport.payload_log'``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelport.config.model import InstanceGroup, ModelConfig, ModelOutput, ModelportOptions
from modelport.errors import InvalidRequest

#: Top-level fields a load request may set, with why that is safe.
TUNABLE: dict[str, str] = {
    "max_batch_size": "how many rows one execution takes",
    "dynamic_batching": "how requests queue and batch",
    "instance_group": "how many CPU instances run (kinds and devices as the repository says)",
    "version_policy": "which of the model's own version directories serve",
    "input": "tensor names, types and shapes, checked against the model at load",
    "output": "tensor names, types and shapes (label files as the repository says)",
    "optimization": "graph optimization level and the known accelerators",
    "response_cache": "whether answers are cached",
    "model_warmup": "samples run at load; a sample file must be inside the model",
    "parameters": "runtime tuning (threads, execution mode); not the tenant",
}

#: Fields of the ``modelport:`` block a load request may set.
TUNABLE_MODELPORT: dict[str, str] = {
    "batching": "whether queued requests batch",
    "batch_key": "which requests may share a batch",
    "inline_max_us": "when a lone request computes on the event loop",
    "inline_busy_max_us": "when batches compute on the event loop under load",
    "pin_instances": "whether instance threads are pinned to cores",
}

#: Why some of the other fields only the repository may set; the rest are
#: refused just the same, with the generic reason.
WHY: dict[str, str] = {
    "platform": "picks the runtime that loads the files",
    "backend": "picks the runtime that loads the files",
    "runtime": "picks the code that loads the files",
    "default_model_filename": "picks the file that is loaded",
    "cc_model_filenames": "picks the file that is loaded",
    "model_repository_agents": "acts on the files before they load",
    "model_operations": "names libraries to load",
    "sequence_batching": "changes what the model is",
    "ensemble_scheduling": "changes what the model is",
    "parameters.tenant": "says which tenant's callers may use the model",
    "label_filename": "names a file",
    "modelport.allow_unsafe_pickle": "lets loading run code from a pickle",
    "modelport.residency": "says where the model may be served",
    "modelport.payload_log": "protects the data in requests (sampling, redaction, sealing)",
    "modelport.rate_limit": "bounds what callers may send",
    "modelport.instance_process": "isolates the model's code in processes of its own",
    "modelport.instance_timeout_s": "stops a batch that runs too long",
    "modelport.method": "picks what the model answers",
    "modelport.cascade": "changes what the model is",
    "modelport.steps": "changes what the model is",
}
_GENERIC = "not a serving setting a load request may tune"
_PLAIN_KINDS = frozenset({"KIND_AUTO", "KIND_CPU"})


def _refuse(field: str, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"parameter 'config': {field!r} cannot be set by a load request ({why}); it needs "
        "the repository's own config: leave it out, or repeat the repository's value"
    )


def apply_override(
    requested: ModelConfig,
    own: ModelConfig,
    derived: Callable[[str], set[str]] = lambda _field: set(),
    max_instances: int = 1,
) -> ModelConfig:
    """``requested``'s serving knobs over the repository's ``own`` config.

    ``derived(field)`` gives, for ``backend`` and ``platform``, the values the
    repository's config leads to when it leaves them out (chosen from the
    model file), which the caller may repeat too. ``max_instances`` bounds
    the instances a request may ask for, unless the repository's config asks
    for more itself. Raises InvalidRequest naming the first field
    ``requested`` may not set that it sets to another value.
    """
    merged: dict[str, Any] = {}
    for field in ModelConfig.model_fields:
        if field in ("name", "modelport"):
            continue
        if field in TUNABLE:
            merged[field] = getattr(requested, field)
            continue
        mine = getattr(own, field)
        if field in requested.model_fields_set and not _repeats(
            field, getattr(requested, field), mine, derived
        ):
            raise _refuse(field, WHY.get(field, _GENERIC))
        merged[field] = mine
    merged["parameters"] = _parameters(requested, own)
    merged["output"] = _outputs(requested.output, own.output)
    _check_instances(requested.instance_group, own.instance_group, max_instances)
    merged["modelport"] = _modelport(requested, own)
    return requested.model_copy(update=merged)


def _repeats(field: str, value: Any, mine: Any, derived: Callable[[str], set[str]]) -> bool:
    """Whether ``value`` is the repository's: its own, or a backend its config leads to."""
    if value == mine:
        return True
    return field in ("backend", "platform") and value in derived(field)


def _parameters(requested: ModelConfig, own: ModelConfig) -> dict[str, Any]:
    """The request's parameters, with the tenant as the repository says."""
    tenant = requested.parameters.get("tenant")
    if tenant is not None and tenant != own.parameters.get("tenant"):
        raise _refuse("parameters.tenant", WHY["parameters.tenant"])
    parameters = {k: v for k, v in requested.parameters.items() if k != "tenant"}
    if "tenant" in own.parameters:
        parameters["tenant"] = own.parameters["tenant"]
    return parameters


def _outputs(requested: list[ModelOutput], own: list[ModelOutput]) -> list[ModelOutput]:
    """The request's outputs, each with the label file the repository gives it."""
    labels = {o.name: o.label_filename for o in own}
    out = []
    for i, output in enumerate(requested):
        mine = labels.get(output.name, "")
        if "label_filename" in output.model_fields_set and output.label_filename != mine:
            raise _refuse(f"output[{i}].label_filename", WHY["label_filename"])
        out.append(output.model_copy(update={"label_filename": mine}))
    return out


def _check_instances(
    requested: list[InstanceGroup], own: list[InstanceGroup], max_instances: int
) -> None:
    """Plain CPU groups, or groups shaped as the repository's, within the bound.

    A group's shape is all but its name and count: its kind, devices, host
    policy ... A request may choose how many instances run, not where.
    """

    def shape(group: InstanceGroup) -> InstanceGroup:
        return group.model_copy(update={"name": "", "count": 1})

    allowed = [shape(g) for g in own]
    for i, group in enumerate(requested):
        plain = group.kind in _PLAIN_KINDS and shape(group) == InstanceGroup(kind=group.kind)
        if not plain and shape(group) not in allowed:
            raise _refuse(
                f"instance_group[{i}]",
                "a load request may ask for KIND_CPU or KIND_AUTO instances, or groups "
                "of the kinds and devices the repository's config gives",
            )
    limit = max(max_instances, sum(g.count for g in own))
    total = sum(g.count for g in requested)
    if total > limit:
        raise _refuse(
            "instance_group",
            f"{total} instances in all; a load request may ask for at most {limit}",
        )


def _modelport(requested: ModelConfig, own: ModelConfig) -> ModelportOptions:
    """The ``modelport:`` block: the request's knobs, the repository's everything else."""
    asked = requested.modelport
    stated = asked.model_fields_set if "modelport" in requested.model_fields_set else set()
    update: dict[str, Any] = {}
    for field in type(asked).model_fields:
        if field in TUNABLE_MODELPORT:
            continue
        value, mine = getattr(asked, field), getattr(own.modelport, field)
        if field in stated and value != mine:
            name = f"modelport.{field}"
            raise _refuse(name, WHY.get(name, _GENERIC))
        update[field] = mine
    return asked.model_copy(update=update)
