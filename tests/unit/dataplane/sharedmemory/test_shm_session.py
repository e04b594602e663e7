"""One request's reads and writes: every span, size and segment checked first."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from modelport.dataplane.codec.tensors import ShmRef
from modelport.dataplane.sharedmemory import Registry, Session
from modelport.errors import InvalidRequest

DATA = np.arange(12, dtype=np.float32).reshape(3, 4)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    (tmp_path / "seg").write_bytes(b"\0" * 16 + DATA.tobytes() + b"\0" * 64)
    reg = Registry(shm_dir=str(tmp_path))
    reg.register(None, "in", "/seg", 16, 48)
    reg.register(None, "out", "/seg", 64, 64)
    return reg


def session(registry: Registry) -> Session:
    return Session(registry, None, 1 << 20)


def test_read_copies_the_tensor_out(registry: Registry, tmp_path: Path) -> None:
    s = session(registry)
    got = s.read(ShmRef("in", 0, 48), "FP32", (3, 4), "input")
    np.testing.assert_array_equal(got, DATA)
    assert got.flags.writeable
    (tmp_path / "seg").write_bytes(b"\xff" * 128)
    np.testing.assert_array_equal(got, DATA)  # the request's own copy
    part = s.read(ShmRef("in", 16, 8), "FP32", (2,), "input")
    assert part.shape == (2,)
    s.close()


@pytest.mark.parametrize(
    ("ref", "shape", "match"),
    [
        (ShmRef("in", 0, 32), (3, 4), "needs 48 bytes"),
        (ShmRef("in", 8, 48), (3, 4), "runs past the end"),
        (ShmRef("in", 1 << 62, 1), (1,), "runs past the end"),
        (ShmRef("nope", 0, 48), (3, 4), "no shared-memory region"),
    ],
)
def test_bad_spans_are_refused(
    registry: Registry, ref: ShmRef, shape: tuple[int, ...], match: str
) -> None:
    with pytest.raises(InvalidRequest, match=match):
        session(registry).read(ref, "FP32", shape, "input")


def test_a_truncated_segment_is_refused(registry: Registry, tmp_path: Path) -> None:
    os.truncate(tmp_path / "seg", 40)
    s = session(registry)
    with pytest.raises(InvalidRequest, match="truncated"):
        s.read(ShmRef("in", 0, 48), "FP32", (3, 4), "input")
    with pytest.raises(InvalidRequest, match="truncated"):
        s.check_output(ShmRef("out", 0, 48), "output")
    with pytest.raises(InvalidRequest, match="truncated"):
        s.write(ShmRef("out", 0, 48), DATA, "FP32", "output")
    s.close()


def test_write_lands_at_the_offset(registry: Registry, tmp_path: Path) -> None:
    s = session(registry)
    assert s.write(ShmRef("out", 8, 48), DATA, "FP32", "output") == 48
    raw = (tmp_path / "seg").read_bytes()
    np.testing.assert_array_equal(np.frombuffer(raw[72:120], np.float32).reshape(3, 4), DATA)
    with pytest.raises(InvalidRequest, match="takes 48 bytes"):
        s.write(ShmRef("out", 0, 40), DATA, "FP32", "output")
    # A transposed (non-contiguous) output is laid out row-major.
    s.write(ShmRef("out", 0, 48), DATA.T, "FP32", "output")
    raw = (tmp_path / "seg").read_bytes()
    np.testing.assert_array_equal(np.frombuffer(raw[64:112], np.float32), DATA.T.ravel())
    s.close()


def test_bytes_tensors(tmp_path: Path) -> None:
    items = [b"a", b"bcd", b""]
    raw = b"".join(struct.pack("<I", len(b)) + b for b in items)
    (tmp_path / "seg").write_bytes(raw + b"\0" * 64)
    reg = Registry(shm_dir=str(tmp_path))
    reg.register(None, "r", "seg", 0, len(raw) + 64)
    s = Session(reg, None, 1 << 20)
    got = s.read(ShmRef("r", 0, len(raw)), "BYTES", (3,), "input")
    assert got.tolist() == items
    with pytest.raises(InvalidRequest, match="at least 20 bytes"):
        s.read(ShmRef("r", 0, len(raw)), "BYTES", (5,), "input")
    bad = struct.pack("<I", 1 << 30) + raw[4:]
    (tmp_path / "seg").write_bytes(bad + b"\0" * 64)
    with pytest.raises(InvalidRequest, match="past the data's end"):
        s.read(ShmRef("r", 0, len(raw)), "BYTES", (3,), "input")
    assert s.write(ShmRef("r", 0, 64), np.array(items, dtype=object), "BYTES", "out") == len(raw)
    assert (tmp_path / "seg").read_bytes()[: len(raw)] == raw
    small = Session(reg, None, 8)
    with pytest.raises(InvalidRequest, match="over the limit"):
        small.read(ShmRef("r", 0, len(raw)), "BYTES", (3,), "input")
    s.close()


def test_close_releases_every_region(registry: Registry) -> None:
    s = session(registry)
    s.read(ShmRef("in", 0, 48), "FP32", (3, 4), "input")
    s.check_output(ShmRef("out", 0, 48), "output")
    held = list(s._held.values())
    registry.unregister(None)
    assert all(r.fd >= 0 for r in held)
    s.close()
    s.close()
    assert all(r.fd == -1 for r in held)
