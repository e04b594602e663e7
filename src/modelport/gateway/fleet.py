"""The fleet file: which nodes serve which models, in which regions, and how.

One file describes a fleet for both the gateway (routing) and ``modelport
fleet up`` (starting the nodes), so both read it through ``load_fleet``.
Everything wrong with it is refused at start as one line naming the file and
the field: a gateway that half-understood its fleet would route silently to
the wrong place, which is worse than not starting.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelport.errors import ConfigError
from modelport.gateway.fleet_tls import TlsSpec, check_tls

POLICIES = ("round_robin", "least_request", "weighted", "ring_hash", "random")
Policy = Literal["round_robin", "least_request", "weighted", "ring_hash", "random"]

#: The header a sequence's requests carry; also ring_hash's default key.
SEQUENCE_HEADER = "modelport-sequence-id"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as a pair; ValueError says what is wrong."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"'{value}' is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(c.isspace() or c in "/@?#" for c in host):
        raise ValueError(f"'{value}' is not host:port")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"'{value}': the port must be a number from 1 to 65535")
    return host, int(port_text)


class GroupSpec(_Strict):
    """A set of interchangeable nodes and the models they serve."""

    models: list[str] = Field(default_factory=list)
    policy: str = "round_robin"
    hash_header: str = SEQUENCE_HEADER
    repository: Path | None = None

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in POLICIES:
            raise ValueError(f"unknown policy '{value}' (one of {', '.join(POLICIES)})")
        return value

    @field_validator("hash_header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c in "-_" for c in value):
            raise ValueError(f"'{value}' is not a header name")
        return value.lower()


class NodeSpec(_Strict):
    """One node the fleet file names (others may register themselves in the store)."""

    name: str = Field(min_length=1)
    http: str
    grpc: str | None = None
    region: str = Field(min_length=1)
    group: str | None = None
    weight: int = Field(default=1, gt=0)

    @field_validator("http", "grpc")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_address(value)
        return value


class HealthSpec(_Strict):
    interval: float = Field(default=1.0, gt=0)
    unhealthy_threshold: int = Field(default=3, gt=0)
    healthy_threshold: int = Field(default=1, gt=0)


class RetrySpec(_Strict):
    attempts: int = Field(default=2, ge=0, le=10)
    budget_percent: float = Field(default=20.0, ge=0, le=100)
    min_concurrent: int = Field(default=10, ge=0, le=10000)
    """Retries always allowed at once, whatever the budget: when a node dies, every
    request in flight to it is reset at the same moment, and a budget taken only as a
    share of the few requests in flight would fail most of those retries."""


class FleetSpec(_Strict):
    """A validated fleet file; paths in it are absolute."""

    regions: list[str] = Field(min_length=1)
    default_group: str | None = None
    groups: dict[str, GroupSpec] = Field(default_factory=lambda: {"main": GroupSpec()})
    nodes: list[NodeSpec] = Field(default_factory=list)
    state_url: str | None = None
    redis_url: str | None = None
    health: HealthSpec = Field(default_factory=HealthSpec)
    retries: RetrySpec = Field(default_factory=RetrySpec)
    tls: TlsSpec | None = None
    tenant_residency: dict[str, list[str]] = Field(default_factory=dict)

    @property
    def primary_region(self) -> str:
        return self.regions[0]

    @property
    def main_group(self) -> str:
        """The group of gRPC calls without a model and of non-model REST paths."""
        return self.default_group or next(iter(self.groups))

    def group_of_model(self, model: str) -> str:
        """The group serving ``model``; models no group names go to the default group."""
        for name, group in self.groups.items():
            if model in group.models:
                return name
        return self.main_group

    def group_of_node(self, node: NodeSpec) -> str:
        return node.group or self.main_group


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _problem(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _check_references(spec: FleetSpec, source: str) -> None:
    """The checks that span fields: names unique, references resolvable."""
    if len(set(spec.regions)) != len(spec.regions):
        raise ConfigError(source, "regions", "a region is listed twice")
    if not spec.groups:
        raise ConfigError(source, "groups", "at least one group is needed")
    if spec.default_group is not None and spec.default_group not in spec.groups:
        raise ConfigError(source, "default_group", f"unknown group '{spec.default_group}'")
    owner: dict[str, str] = {}
    for group_name, group in spec.groups.items():
        for model in group.models:
            if model in owner and owner[model] != group_name:
                raise ConfigError(
                    source,
                    f"groups.{group_name}.models",
                    f"model '{model}' is already in group '{owner[model]}' "
                    "(a model may be in at most one group)",
                )
            owner[model] = group_name
    seen: set[str] = set()
    for index, node in enumerate(spec.nodes):
        where = f"nodes[{index}]"
        if node.name in seen:
            raise ConfigError(source, f"{where}.name", f"duplicate node name '{node.name}'")
        seen.add(node.name)
        if node.region not in spec.regions:
            raise ConfigError(
                source,
                f"{where}.region",
                f"region '{node.region}' is not in regions ({', '.join(spec.regions)})",
            )
        if node.group is not None and node.group not in spec.groups:
            raise ConfigError(source, f"{where}.group", f"unknown group '{node.group}'")


def _resolve_paths(data: dict[str, Any], folder: Path) -> None:
    """Relative paths in the file mean relative to the file, not to the caller's folder."""

    def resolve(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).is_absolute():
            return str(folder / value)
        return value

    groups = data.get("groups")
    if isinstance(groups, dict):
        for group in groups.values():
            if isinstance(group, dict) and "repository" in group:
                group["repository"] = resolve(group["repository"])
    tls = data.get("tls")
    if isinstance(tls, dict):
        for key in list(tls):
            tls[key] = resolve(tls[key])


def parse_fleet(data: Any, source: str, folder: Path) -> FleetSpec:
    """Validate a fleet mapping; the error names ``source`` and the first bad field."""
    if not isinstance(data, dict):
        raise ConfigError(source, "", "expected a mapping with regions, groups and nodes")
    _resolve_paths(data, folder)
    try:
        spec = FleetSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(p for p in first["loc"] if not str(p).startswith("function-"))
        raise ConfigError(source, _field_path(loc), _problem(first)) from None
    _check_references(spec, source)
    if spec.tls is not None:
        check_tls(spec.tls, source)
    return spec


def load_fleet(path: Path) -> FleetSpec:
    """Read and validate a fleet file; raises ConfigError with one line."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(source, "", f"not valid YAML{where}") from None
    return parse_fleet(data, source, path.resolve().parent)
