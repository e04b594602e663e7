"""InfoService over a fake table: visibility filtered once, unknown models refused alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from modelport.dataplane.info import InfoService, only_visible
from modelport.dataplane.table import RepositoryEntry
from modelport.errors import ModelNotReady, NotFound
from modelport.types import ModelSignature, TensorSpec

SIGNATURE = ModelSignature(
    inputs=(TensorSpec("x", "FP32", (-1, 2)),),
    outputs=(TensorSpec("y", "FP32", (-1, 1)),),
    max_batch_size=4,
)


class Config:
    def __init__(self, name: str) -> None:
        self.name = name

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "max_batch_size": 4}


class Stats:
    def to_json(self, name: str, version: str) -> dict[str, Any]:
        return {"name": name, "version": version}


@dataclass
class Version:
    """The attributes of a ModelVersion the service reads."""

    name: str
    version: str
    platform: str = "onnxruntime_onnx"
    signature: ModelSignature = SIGNATURE
    config: Config = field(init=False)
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        self.config = Config(self.name)


class Table:
    """Models a, b (versions 1, 2; 2 ready only for a) and c; 'cold' exists but is not ready."""

    def __init__(self) -> None:
        self.models = [Version("b", "1"), Version("a", "2"), Version("a", "1"), Version("c", "1")]

    def acquire(self, name: str, version: str | None) -> Any:
        for m in sorted(self.models, key=lambda m: -int(m.version)):
            if m.name == name and (version is None or m.version == version):
                return m
        if name == "cold":
            raise ModelNotReady("model 'cold' is not ready: loading")
        raise NotFound(f"unknown model {name!r}")

    def versions(self, name: str) -> list[str]:
        found = sorted({m.version for m in self.models if m.name == name})
        if name == "b":
            found.append("2")
        if not found:
            raise NotFound(f"unknown model {name!r}")
        return found

    def ready(self) -> list[Any]:
        return list(self.models)

    def is_ready(self) -> bool:
        return True


class Repository:
    def index(self, ready_only: bool) -> list[RepositoryEntry]:
        entries = [
            RepositoryEntry("a", "1", "READY"),
            RepositoryEntry("b", "1", "READY"),
            RepositoryEntry("b", "2", "UNAVAILABLE", "failed"),
        ]
        return [e for e in entries if e.state == "READY"] if ready_only else entries

    async def load(self, name: str, config: Any, actor: str | None = None) -> None:
        raise AssertionError("not called")

    async def unload(self, name: str, actor: str | None = None) -> None:
        raise AssertionError("not called")


class CountingVisible:
    """A visibility test that sees only ``allowed`` and counts its calls."""

    def __init__(self, *allowed: str) -> None:
        self.allowed = set(allowed)
        self.calls: list[str] = []

    def __call__(self, name: str) -> bool:
        self.calls.append(name)
        return name in self.allowed


@pytest.fixture
def info() -> InfoService:
    return InfoService(Table(), Repository(), "modelport", "1.0", ("statistics",))  # type: ignore[arg-type]


def _names(entries: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["name"], e["version"]) for e in entries]


def test_server_metadata(info: InfoService) -> None:
    meta = info.server_metadata()
    assert (meta.name, meta.version, meta.extensions) == ("modelport", "1.0", ("statistics",))


def test_model_metadata_lists_every_version_unless_one_is_asked_for(info: InfoService) -> None:
    meta = info.model_metadata("a", None)
    assert (meta.name, meta.versions, meta.platform) == ("a", ["1", "2"], "onnxruntime_onnx")
    assert meta.inputs == SIGNATURE.inputs and meta.outputs == SIGNATURE.outputs
    assert info.model_metadata("a", "1").versions == ["1"]


def test_unknown_model_is_not_found_everywhere(info: InfoService) -> None:
    with pytest.raises(NotFound):
        info.model_metadata("nope", None)
    with pytest.raises(NotFound):
        info.model_config("nope", None)
    with pytest.raises(NotFound):
        info.statistics("nope", None, None)


def test_model_config_is_the_loaded_versions(info: InfoService) -> None:
    assert info.model_config("a", "1") == {"name": "a", "max_batch_size": 4}


def test_readiness_carries_the_error_instead_of_raising(info: InfoService) -> None:
    assert info.model_ready("a", None).ready
    missing = info.model_ready("nope", None)
    assert not missing.ready and isinstance(missing.error, NotFound)
    cold = info.model_ready("cold", None)
    assert not cold.ready and isinstance(cold.error, ModelNotReady)


def test_statistics_of_every_model_sorted(info: InfoService) -> None:
    assert _names(info.statistics(None, None, None)) == [
        ("a", "1"),
        ("a", "2"),
        ("b", "1"),
        ("c", "1"),
    ]


def test_statistics_of_one_model_and_version(info: InfoService) -> None:
    assert _names(info.statistics("a", None, None)) == [("a", "1"), ("a", "2")]
    assert _names(info.statistics("a", "2", None)) == [("a", "2")]


def test_statistics_of_a_version_not_loaded_is_not_found(info: InfoService) -> None:
    with pytest.raises(NotFound, match="version '2' is not loaded"):
        info.statistics("b", "2", None)


def test_statistics_show_only_visible_models_testing_each_once(info: InfoService) -> None:
    visible = CountingVisible("a", "c")
    assert _names(info.statistics(None, None, visible)) == [("a", "1"), ("a", "2"), ("c", "1")]
    assert sorted(visible.calls) == ["a", "a", "b", "c"]


def test_repository_index_shows_only_visible_models(info: InfoService) -> None:
    visible = CountingVisible("b")
    entries = info.repository_index(False, visible)
    assert [(e.name, e.version, e.state) for e in entries] == [
        ("b", "1", "READY"),
        ("b", "2", "UNAVAILABLE"),
    ]
    assert visible.calls == ["a", "b", "b"]
    assert [e.name for e in info.repository_index(True, None)] == ["a", "b"]


def test_only_visible_without_a_test_keeps_everything() -> None:
    entries = [RepositoryEntry("a", "1", "READY"), RepositoryEntry("b", "1", "READY")]
    assert only_visible(entries, None) == entries
    assert only_visible(entries, lambda name: name == "b") == entries[1:]
