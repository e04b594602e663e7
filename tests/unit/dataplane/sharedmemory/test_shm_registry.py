"""The region registry: names, keys, limits, ownership, and what a segment must be.

Segments are plain files in a temporary directory standing in for /dev/shm:
the registry only opens, fstats, preads and pwrites them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelport.dataplane.sharedmemory import Registry, owner_of
from modelport.dataplane.sharedmemory.registry import segment_name
from modelport.errors import Conflict, InvalidRequest, NotFound
from modelport.types import Identity, Role

ALICE = owner_of(Identity("key:a", "alice", Role.INVOKER, ("*",), tenant="acme"))
ALICE_OTHER_TENANT = owner_of(Identity("key:a", "alice", Role.INVOKER, ("*",), tenant="globex"))
BOB = owner_of(Identity("key:b", "bob", Role.INVOKER, ("*",)))


def segment(root: Path, name: str, size: int) -> Path:
    path = root / name
    path.write_bytes(b"\0" * size)
    return path


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(shm_dir=str(tmp_path), max_regions_per_owner=3, max_bytes_per_owner=4096)


@pytest.mark.parametrize("key", ["/seg", "seg", "/a.b-c_d"])
def test_keys_as_shm_open_takes_them(key: str) -> None:
    assert segment_name(key) == key.lstrip("/")


@pytest.mark.parametrize(
    "key",
    ["", "/", "//seg", "a/b", "/../x", "..", ".", "/mport_0011", "mport_", "/sem.mp-1", "x\0y",
     "x\ny", "a" * 300, 7, None],
)  # fmt: skip
def test_paths_and_reserved_keys_are_refused(key: object) -> None:
    with pytest.raises(InvalidRequest):
        segment_name(key)


def test_register_status_unregister(registry: Registry, tmp_path: Path) -> None:
    segment(tmp_path, "seg", 256)
    registry.register(ALICE, "in", "/seg", 0, 128)
    registry.register(ALICE, "out", "/seg", 128, 128)  # one segment, two regions
    assert [r.name for r in registry.status(ALICE)] == ["in", "out"]
    assert registry.status(ALICE, "out")[0]._asdict() == {
        "name": "out", "key": "/seg", "offset": 128, "byte_size": 128
    }  # fmt: skip
    with pytest.raises(Conflict, match="already registered"):
        registry.register(ALICE, "in", "/seg", 0, 1)
    registry.unregister(ALICE, "in")
    registry.unregister(ALICE, "in")  # missing: no error
    assert [r.name for r in registry.status(ALICE)] == ["out"]
    registry.unregister(ALICE)
    assert registry.status(ALICE) == [] and registry.counts == (0, 0)


def test_the_segment_must_exist_be_a_file_and_hold_the_span(
    registry: Registry, tmp_path: Path
) -> None:
    segment(tmp_path, "seg", 100)
    with pytest.raises(InvalidRequest, match="no shared-memory segment"):
        registry.register(None, "r", "/missing", 0, 10)
    with pytest.raises(InvalidRequest, match="holds 100 bytes"):
        registry.register(None, "r", "/seg", 50, 51)
    (tmp_path / "dir").mkdir()
    with pytest.raises(InvalidRequest):
        registry.register(None, "r", "/dir", 0, 1)
    (tmp_path / "link").symlink_to(tmp_path / "seg")
    with pytest.raises(InvalidRequest, match="cannot open"):
        registry.register(None, "r", "/link", 0, 1)
    os.mkfifo(tmp_path / "fifo")  # would block a plain open forever
    with pytest.raises(InvalidRequest):
        registry.register(None, "r", "/fifo", 0, 1)
    assert registry.counts == (0, 0)


@pytest.mark.parametrize(
    ("offset", "byte_size"), [(-1, 10), (0, 0), (0, -5), ("0", 10), (0, 1.5), (0, True)]
)
def test_spans_are_checked_before_opening(
    registry: Registry, offset: object, byte_size: object
) -> None:
    with pytest.raises(InvalidRequest):
        registry.register(None, "r", "/never-opened", offset, byte_size)


def test_limits_per_owner(registry: Registry, tmp_path: Path) -> None:
    segment(tmp_path, "seg", 8192)
    for i in range(3):
        registry.register(ALICE, f"r{i}", "/seg", 0, 16)
    with pytest.raises(InvalidRequest, match="at most 3"):
        registry.register(ALICE, "r3", "/seg", 0, 16)
    registry.unregister(ALICE, "r0")
    with pytest.raises(InvalidRequest, match="4096 bytes"):
        registry.register(ALICE, "big", "/seg", 0, 4096)


def test_a_region_belongs_to_its_owner(registry: Registry, tmp_path: Path) -> None:
    segment(tmp_path, "seg", 64)
    segment(tmp_path, "bobs", 64)
    registry.register(ALICE, "r", "/seg", 0, 64)
    assert registry.status(BOB) == [] and registry.status(ALICE_OTHER_TENANT) == []
    with pytest.raises(NotFound):
        registry.status(BOB, "r")
    with pytest.raises(InvalidRequest, match="no shared-memory region 'r'"):
        registry.acquire(BOB, "r", "input 'x'")
    registry.unregister(BOB, "r")
    registry.unregister(BOB)
    assert [r.name for r in registry.status(ALICE)] == ["r"]
    # Bob may use the same name for a region of his own, not alice's segment.
    with pytest.raises(InvalidRequest, match="another caller"):
        registry.register(BOB, "r", "/seg", 0, 64)
    registry.register(BOB, "r", "/bobs", 0, 64)
    assert registry.status(BOB)[0].key == "/bobs"
    # Once alice lets her segment go, it is free.
    registry.unregister(ALICE)
    registry.register(BOB, "r2", "/seg", 0, 64)


def test_unregister_while_held_closes_after_the_last_user(
    registry: Registry, tmp_path: Path
) -> None:
    segment(tmp_path, "seg", 64)
    registry.register(None, "r", "/seg", 0, 64)
    held = registry.acquire(None, "r", "input")
    registry.unregister(None, "r")
    assert held.fd >= 0 and os.fstat(held.fd).st_size == 64  # still open for the request
    registry.release(held)
    assert held.fd == -1
