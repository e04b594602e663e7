"""Sealing model versions at rest, and opening them into memory at load."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

from modelport.config.server import load_server_config
from modelport.controlplane.crypto.keys import (
    LocalKeyProvider,
    key_id_of,
    read_master_key_file,
    write_new_master_key,
)
from modelport.controlplane.crypto.memview import MemoryView, memory_files_supported
from modelport.controlplane.crypto.providers import (
    build_key_provider,
    key_provider_for,
    load_plugged_provider,
)
from modelport.controlplane.crypto.sealing import MANIFEST, open_sealed, seal_version
from modelport.controlplane.registry import Registry
from modelport.errors import ConfigError, InvalidRequest, ModelLoadError
from modelport.observability.metrics import Metrics
from tests.integration.models import add_sub_model

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SECRET_TEXT = b"weights that must stay secret " * 10

pytestmark = pytest.mark.skipif(not memory_files_supported(), reason="needs Linux memfd")


def make_provider() -> LocalKeyProvider:
    """A factory for the plug-in test: what a KMS package would expose."""
    return LocalKeyProvider(OTHER_KEY)


@pytest.fixture
def keys() -> LocalKeyProvider:
    return LocalKeyProvider(KEY)


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Memory views go under the test's own directory, so leftovers can be counted."""
    views = tmp_path / "views"
    views.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(views))
    return views


def _version(root: Path, model: str = "m", version: int = 1) -> Path:
    """A version with nested, empty and multi-chunk files."""
    v = root / "repo" / model / str(version)
    (v / "sub" / "deeper").mkdir(parents=True)
    (v / "model.bin").write_bytes(SECRET_TEXT)
    (v / "other.bin").write_bytes(SECRET_TEXT[::-1])
    (v / "sub" / "deeper" / "big.bin").write_bytes(os.urandom(10_000) + SECRET_TEXT)
    (v / "sub" / "empty").write_bytes(b"")
    return v


def _opened(
    version_dir: Path, keys: LocalKeyProvider, model: str = "m", version: int = 1
) -> dict[str, bytes]:
    return {f.path: b"".join(f.chunks()) for f in open_sealed(version_dir, model, version, keys)}


def _all_bytes(root: Path) -> Iterator[bytes]:
    """The content of every file on disk below ``root`` (links are not files on disk)."""
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            yield p.read_bytes()


# ------------------------------------------------------------------- sealing


def test_round_trip_leaves_no_plaintext(tmp_path: Path, keys: LocalKeyProvider) -> None:
    v = _version(tmp_path)
    before = {p.relative_to(v).as_posix(): p.read_bytes() for p in v.rglob("*") if p.is_file()}
    assert seal_version(v, keys, chunk_bytes=4096) == 4
    names = sorted(p.relative_to(v).as_posix() for p in v.rglob("*") if p.is_file())
    assert names == [
        "model.bin.sealed",
        "other.bin.sealed",
        "sealed.json",
        "sub/deeper/big.bin.sealed",
        "sub/empty.sealed",
    ]
    assert not any(SECRET_TEXT[:20] in data for data in _all_bytes(tmp_path / "repo"))
    assert sorted(p.name for p in v.parent.iterdir()) == ["1"]  # no work directories left
    manifest = (v / MANIFEST).read_text()
    assert base64.b64encode(KEY).decode() not in manifest
    assert _opened(v, keys) == before


def test_refuses_what_it_cannot_seal(tmp_path: Path, keys: LocalKeyProvider) -> None:
    v = _version(tmp_path)
    seal_version(v, keys)
    with pytest.raises(InvalidRequest, match="already sealed"):
        seal_version(v, keys)
    linked = _version(tmp_path, "linked")
    (linked / "link.bin").symlink_to(linked / "model.bin")
    with pytest.raises(InvalidRequest, match=r"link\.bin: a symbolic link"):
        seal_version(linked, keys)
    assert (linked / "model.bin").read_bytes() == SECRET_TEXT  # untouched
    with pytest.raises(InvalidRequest, match="not a version directory"):
        seal_version(linked.parent, keys)


def test_wrong_key_is_named_and_no_key_material_shown(
    tmp_path: Path, keys: LocalKeyProvider
) -> None:
    v = _version(tmp_path)
    seal_version(v, keys)
    with pytest.raises(ModelLoadError, match="wrong key") as info:
        open_sealed(v, "m", 1, LocalKeyProvider(OTHER_KEY))
    assert key_id_of(OTHER_KEY) in info.value.message
    for key in (KEY, OTHER_KEY):
        assert base64.b64encode(key).decode() not in info.value.message


def test_flipped_byte_fails_that_file(tmp_path: Path, keys: LocalKeyProvider) -> None:
    v = _version(tmp_path)
    seal_version(v, keys)
    sealed = v / "other.bin.sealed"
    data = bytearray(sealed.read_bytes())
    data[5] ^= 1
    sealed.write_bytes(bytes(data))
    files = {f.path: f for f in open_sealed(v, "m", 1, keys)}
    assert b"".join(files["model.bin"].chunks()) == SECRET_TEXT
    with pytest.raises(ModelLoadError, match=r"other\.bin\.sealed: authentication failed"):
        b"".join(files["other.bin"].chunks())


def test_files_swapped_within_a_version_are_refused(tmp_path: Path, keys: LocalKeyProvider) -> None:
    v = _version(tmp_path)
    seal_version(v, keys)
    a, b = v / "model.bin.sealed", v / "other.bin.sealed"  # same length
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    with pytest.raises(ModelLoadError, match="sealed for another file"):
        _opened(v, keys)


@pytest.mark.parametrize("target", [("m", 2), ("n", 1)])
def test_file_replayed_from_another_version_or_model_is_refused(
    tmp_path: Path, keys: LocalKeyProvider, target: tuple[str, int]
) -> None:
    source = _version(tmp_path)
    other = _version(tmp_path, *target)
    seal_version(source, keys)
    seal_version(other, keys)
    shutil.copyfile(source / "model.bin.sealed", other / "model.bin.sealed")
    with pytest.raises(ModelLoadError, match="authentication failed"):
        _opened(other, keys, *target)


@pytest.mark.parametrize("target", [("m", 2), ("n", 1)])
def test_whole_version_copied_elsewhere_is_refused(
    tmp_path: Path, keys: LocalKeyProvider, target: tuple[str, int]
) -> None:
    source = _version(tmp_path)
    seal_version(source, keys)
    copy = tmp_path / "repo" / target[0] / str(target[1])
    shutil.copytree(source, copy)
    with pytest.raises(ModelLoadError, match="sealed for model 'm' version 1, not for"):
        _opened(copy, keys, *target)


def _edit_manifest(v: Path, edit: str) -> None:
    manifest = json.loads((v / MANIFEST).read_text())
    if edit == "size":
        manifest["files"][0]["size"] += 1
    elif edit == "drop":
        manifest["files"].pop()
    elif edit == "model":
        manifest["model"] = "n"
    elif edit == "escape":
        manifest["files"][0]["path"] = "../../escape"
    elif edit == "type":
        manifest["chunk_size"] = "big"
    (v / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        ("size", "altered after sealing"),
        ("drop", "altered after sealing"),
        ("model", "sealed for model 'n'"),
        ("escape", r"files\[0\]\.path: '\.\./\.\./escape' is not a plain relative path"),
        ("type", "chunk_size: expected int"),
    ],
)
def test_edited_manifest_is_refused(
    tmp_path: Path, keys: LocalKeyProvider, edit: str, reason: str
) -> None:
    v = _version(tmp_path)
    seal_version(v, keys)
    _edit_manifest(v, edit)
    with pytest.raises(ModelLoadError, match=reason):
        _opened(v, keys)


def test_missing_extra_and_truncated_files_are_refused(
    tmp_path: Path, keys: LocalKeyProvider
) -> None:
    v = _version(tmp_path)
    seal_version(v, keys)
    (v / "model.onnx").write_bytes(b"planted plaintext")
    with pytest.raises(ModelLoadError, match=r"model\.onnx: not part of the sealed version"):
        open_sealed(v, "m", 1, keys)
    (v / "model.onnx").unlink()
    sealed = v / "other.bin.sealed"
    sealed.write_bytes(sealed.read_bytes()[:-1])
    with pytest.raises(ModelLoadError, match=r"other\.bin\.sealed: \d+ bytes, but the manifest"):
        open_sealed(v, "m", 1, keys)
    sealed.unlink()
    with pytest.raises(ModelLoadError, match=r"other\.bin\.sealed: missing"):
        open_sealed(v, "m", 1, keys)
    (v / MANIFEST).write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"sealed\.json: not valid JSON"):
        open_sealed(v, "m", 1, keys)


# ---------------------------------------------------------------------- keys


def test_key_from_file_raw_or_base64_and_from_env(tmp_path: Path) -> None:
    raw, text = tmp_path / "raw.key", tmp_path / "text.key"
    raw.write_bytes(KEY)
    text.write_text(base64.b64encode(KEY).decode() + "\n")
    env = base64.b64encode(KEY).decode()
    ids = {
        p.key_id
        for p in (
            build_key_provider(raw, None, None),
            build_key_provider(text, None, None),
            build_key_provider(None, env, None),
        )
        if p is not None
    }
    assert ids == {key_id_of(KEY)}
    assert build_key_provider(None, None, None) is None
    short = tmp_path / "short.key"
    short.write_text(base64.b64encode(KEY[:16]).decode())
    with pytest.raises(ConfigError, match="decodes to 16 bytes, not 32"):
        read_master_key_file(short)
    with pytest.raises(ConfigError, match="MODELPORT_MASTER_KEY: not a master key"):
        build_key_provider(None, "not base64!", None)


def test_server_setting_from_env_is_never_shown() -> None:
    env = base64.b64encode(KEY).decode()
    config = load_server_config(None, {"MODELPORT_MASTER_KEY": env}, {})
    for shown in (repr(config), str(config), config.model_dump_json()):
        assert env not in shown
    provider = key_provider_for(config)
    assert provider is not None
    assert provider.key_id == key_id_of(KEY)
    assert env not in repr(provider)


def test_keygen_writes_a_private_key_once(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    key_id = write_new_master_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert key_id_of(read_master_key_file(path)) == key_id
    with pytest.raises(ConfigError, match="already exists"):
        write_new_master_key(path)


def test_plugged_provider_by_dotted_path(tmp_path: Path) -> None:
    provider = load_plugged_provider(f"{__name__}:make_provider")
    assert provider.key_id == key_id_of(OTHER_KEY)
    v = _version(tmp_path)
    seal_version(v, provider)
    assert _opened(v, LocalKeyProvider(OTHER_KEY))["model.bin"] == SECRET_TEXT
    with pytest.raises(ConfigError, match="has no 'nothing'"):
        load_plugged_provider(f"{__name__}:nothing")
    with pytest.raises(ConfigError, match="no entry point of that name"):
        load_plugged_provider("no-such-provider")


# --------------------------------------------------------------- memory view


def test_memory_view_is_readable_then_gone(private_tmp: Path) -> None:
    view = MemoryView("m", 3)
    view.add("sub/model.bin", len(SECRET_TEXT), [SECRET_TEXT[:7], SECRET_TEXT[7:]])
    path = view.version_dir / "sub" / "model.bin"
    assert path.read_bytes() == SECRET_TEXT
    assert path.is_symlink()
    assert os.readlink(path).startswith("/proc/self/fd/")
    assert view.root.stat().st_mode & 0o777 == 0o700
    assert view.version_dir.parent.name == "m"
    assert not any(SECRET_TEXT[:20] in data for data in _all_bytes(private_tmp) if data)
    with pytest.raises(PermissionError):
        path.write_bytes(b"changed")  # sealed against writes
    view.release()
    assert not path.exists()
    assert not view.root.exists()
    assert list(private_tmp.iterdir()) == []
    view.release()  # twice is harmless


def test_memory_view_refuses_a_wrong_length() -> None:
    view = MemoryView("m", 1)
    with pytest.raises(ModelLoadError, match=r"model\.bin: 3 bytes, not the 4"):
        view.add("model.bin", 4, [b"abc"])
    view.release()


# ------------------------------------------------------- loading in a registry


@pytest.fixture
def sealed_repo(tmp_path: Path, keys: LocalKeyProvider) -> Path:
    repo = tmp_path / "repo"
    for name in ("secret", "plain"):
        path = repo / name / "1" / "model.onnx"
        path.parent.mkdir(parents=True)
        onnx.save(add_sub_model(), str(path))
    seal_version(repo / "secret" / "1", keys)
    return repo


def _views(root: Path) -> list[Path]:
    return list(root.iterdir())


def _states(reg: Registry) -> dict[str, tuple[str, str]]:
    return {e.name: (e.state, e.reason) for e in reg.index(ready_only=False)}


def test_registry_serves_a_sealed_model_from_memory(
    sealed_repo: Path, keys: LocalKeyProvider, private_tmp: Path
) -> None:
    async def scenario() -> None:
        reg = Registry(sealed_repo, Metrics(), keys=keys)
        await reg.start()
        model = reg.acquire("secret", None)
        x = np.arange(16, dtype=np.float32).reshape(1, 16)
        out = model.servable.scheduler.runtime.predict({"INPUT0": x, "INPUT1": x}, ["OUTPUT0"])
        np.testing.assert_array_equal(out["OUTPUT0"], 2 * x)
        assert len(_views(private_tmp)) == 1  # the live view
        await reg.close()
        assert _views(private_tmp) == []  # released with the runtime

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("provider", "reason"),
    [
        (None, "sealed (sealed.json) but no master key is configured"),
        (LocalKeyProvider(OTHER_KEY), "has id 492befe9cd07033d229b094c2ca8a51d (wrong key)"),
    ],
)
def test_registry_marks_only_that_version_unavailable(
    sealed_repo: Path, provider: LocalKeyProvider | None, reason: str, private_tmp: Path
) -> None:
    async def scenario() -> None:
        reg = Registry(sealed_repo, Metrics(), keys=provider)
        await reg.start()
        states = _states(reg)
        assert states["plain"] == ("READY", "")
        assert states["secret"][0] == "UNAVAILABLE"
        assert reason in states["secret"][1]
        await reg.close()
        assert _views(private_tmp) == []

    asyncio.run(scenario())


def test_registry_refuses_sealed_models_in_processes(
    sealed_repo: Path, keys: LocalKeyProvider
) -> None:
    (sealed_repo / "secret" / "config.yaml").write_text("modelport: {instance_process: true}\n")

    async def scenario() -> None:
        reg = Registry(sealed_repo, Metrics(), keys=keys)
        await reg.start()
        state, reason = _states(reg)["secret"]
        assert state == "UNAVAILABLE"
        assert "instance_process: true is not supported" in reason
        await reg.close()

    asyncio.run(scenario())
