"""What a load request's config may change, and what only the repository may set.

Triton's repository load takes a whole model config (the ``config``
parameter) that replaces the one on disk. Most of it is the caller's to
choose: batching, instances, tensors, warm-up, tuning parameters. The fields
below decide which files are read and how, where the model may run, or who
may use it; an operator allowed to load one model must not widen any of that
by sending a config. So they always come from the repository's own config,
and an override that gives one of them another value is refused (400 /
INVALID_ARGUMENT) with the field named. Repeating the repository's value is
accepted, so a config read from ``GET /v2/models/{m}/config``, edited and sent
back still loads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelport.config.model import ModelConfig
from modelport.errors import InvalidRequest

#: Fields only the repository's config may set, as dotted paths, with why.
PROTECTED: dict[str, str] = {
    "platform": "picks the runtime that loads the files",
    "backend": "picks the runtime that loads the files",
    "runtime": "picks the code that loads the files",
    "default_model_filename": "picks the file that is loaded",
    "cc_model_filenames": "picks the file that is loaded",
    "model_repository_agents": "acts on the files before they load",
    "modelport.allow_unsafe_pickle": "lets loading run code from a pickle",
    "modelport.residency": "says where the model may be served",
    "parameters.tenant": "says which tenant's callers may use the model",
}


def _set_in(config: ModelConfig, field: str) -> bool:
    """Whether the override states ``field`` itself (a default it left out does not count)."""
    if field == "parameters.tenant":
        return "tenant" in config.parameters
    if field.startswith("modelport."):
        return (
            "modelport" in config.model_fields_set
            and field.removeprefix("modelport.") in config.modelport.model_fields_set
        )
    return field in config.model_fields_set


def _value(config: ModelConfig, field: str) -> Any:
    if field == "parameters.tenant":
        return config.parameter("tenant")
    if field.startswith("modelport."):
        return getattr(config.modelport, field.removeprefix("modelport."))
    return getattr(config, field)


def apply_override(
    requested: ModelConfig,
    own: ModelConfig,
    derived: Callable[[str], set[str]] = lambda _field: set(),
) -> ModelConfig:
    """``requested`` with every protected field as the repository's ``own`` config has it.

    ``derived(field)`` gives, for ``backend`` and ``platform``, the values the
    repository's config leads to when it leaves them out (chosen from the
    model file), which the caller may repeat too. Raises InvalidRequest naming
    the first protected field ``requested`` sets to anything else.
    """
    for field, why in PROTECTED.items():
        if not _set_in(requested, field):
            continue
        value = _value(requested, field)
        if value == _value(own, field):
            continue
        if field in ("backend", "platform") and value in derived(field):
            continue
        raise InvalidRequest(
            f"parameter 'config': {field!r} cannot be set by a load request ({why}); only "
            "the model's config in the repository sets it: leave it out, or repeat that value"
        )
    parameters = {k: v for k, v in requested.parameters.items() if k != "tenant"}
    if "tenant" in own.parameters:
        parameters["tenant"] = own.parameters["tenant"]
    modelport = requested.modelport.model_copy(
        update={
            "allow_unsafe_pickle": own.modelport.allow_unsafe_pickle,
            "residency": own.modelport.residency,
        }
    )
    top = {f: getattr(own, f) for f in PROTECTED if "." not in f}
    return requested.model_copy(update={**top, "modelport": modelport, "parameters": parameters})
