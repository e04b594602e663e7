"""The sealed format: a version directory's files under AES-256-GCM, and back.

Layout after ``modelport encrypt REPO/m/1``::

    REPO/m/1/sealed.json            format, model, version, key_id, wrapped_key,
                                    chunk_size, files [{path, size, nonce}], mac
    REPO/m/1/model.onnx.sealed      ciphertext, chunk after chunk

Each file is cut into ``chunk_size`` pieces so neither sealing nor opening
holds a whole model twice. Chunk ``i`` of a file is encrypted with nonce
``file nonce (8 bytes) || i (4 bytes)`` and associated data naming the
model, the version, the file's path, ``i`` and whether it is the last
chunk. So a sealed file copied over another path, into another version or
model, reordered, or cut short fails authentication. The manifest itself is
authenticated by an HMAC under a key derived from the data key, so editing
it (dropping a file, changing a size) is refused too. What this cannot
detect is a whole older sealed copy of the same model and version put back
in place: that needs state outside the directory.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from modelport.controlplane.crypto.keys import KEY_BYTES, KeyProvider
from modelport.controlplane.repository.layout import check_model_name
from modelport.controlplane.repository.staging import copy_mode
from modelport.errors import InvalidRequest, ModelLoadError, ModelportError

MANIFEST = "sealed.json"
SUFFIX = ".sealed"
FORMAT = 1
CHUNK_BYTES = 1 << 20
_MIN_CHUNK, _MAX_CHUNK = 1 << 12, 1 << 26
_TAG_BYTES = 16
_NONCE_PREFIX_BYTES = 8
_MAX_MANIFEST_BYTES = 16 << 20
_FILES_INFO = b"modelport sealed files v1"
_MAC_INFO = b"modelport sealed manifest v1"
_T = TypeVar("_T")


@dataclass(frozen=True)
class SealedFile:
    """One file of an opened manifest, checked present and of the right length."""

    path: str
    size: int
    _source: Path
    _nonce: bytes
    _aead: AESGCM
    _chunk: int
    _model: str
    _version: int

    def chunks(self) -> Iterator[bytes]:
        """The plaintext, one authenticated chunk at a time (ModelLoadError on tampering)."""
        count = _chunk_count(self.size, self._chunk)
        with self._source.open("rb") as f:
            for i in range(count):
                last = i == count - 1
                want = (self.size - i * self._chunk if last else self._chunk) + _TAG_BYTES
                sealed = f.read(want)
                aad = _associated(self._model, self._version, self.path, i, last)
                try:
                    yield self._aead.decrypt(self._nonce + i.to_bytes(4, "big"), sealed, aad)
                except InvalidTag:
                    raise ModelLoadError(
                        f"{self._source.name}: authentication failed (the file was altered, "
                        "or it was sealed for another file, version or model)"
                    ) from None


def seal_version(version_dir: Path, keys: KeyProvider, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Replace every file of ``version_dir`` by its sealed form; returns how many.

    The sealed copy is built in a hidden sibling directory (ignored by the
    repository scan) and swapped in by renames, so a failure leaves the
    plaintext version as it was and a success leaves no plaintext behind.
    """
    model, version = _identify(version_dir)
    if (version_dir / MANIFEST).exists():
        raise InvalidRequest(f"{version_dir}: already sealed ({MANIFEST} is present)")
    plain = _plain_files(version_dir)
    data_key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
    aead = AESGCM(_derive(data_key, _FILES_INFO))
    work = Path(tempfile.mkdtemp(prefix=f".{version}.sealing-", dir=version_dir.parent))
    try:
        entries = []
        for rel in plain:
            nonce = os.urandom(_NONCE_PREFIX_BYTES)
            where = (model, version, rel)
            size = _seal_file(
                version_dir / rel, work / (rel + SUFFIX), aead, nonce, chunk_bytes, where
            )
            entries.append({"path": rel, "size": size, "nonce": _b64(nonce)})
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "model": model,
            "version": version,
            "key_id": keys.key_id,
            "wrapped_key": _b64(keys.wrap(data_key)),
            "chunk_size": chunk_bytes,
            "files": entries,
        }
        manifest["mac"] = _mac(data_key, manifest)
        _write_synced(work / MANIFEST, json.dumps(manifest, indent=1).encode() + b"\n")
        copy_mode(work, version_dir)
        _swap_in(version_dir, work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return len(plain)


def open_sealed(version_dir: Path, model: str, version: int, keys: KeyProvider) -> list[SealedFile]:
    """Check a sealed version completely except the ciphertexts, which ``chunks`` checks.

    Raises ModelLoadError naming the file and what is wrong with it; no
    message carries key material or plaintext.
    """
    manifest = _read_manifest(version_dir / MANIFEST)
    if manifest.model != model or manifest.version != version:
        raise ModelLoadError(
            f"{MANIFEST}: sealed for model {manifest.model!r} version {manifest.version}, "
            f"not for model {model!r} version {version} (copied from elsewhere?)"
        )
    try:
        data_key = keys.unwrap(manifest.wrapped_key, manifest.key_id)
    except ModelportError as exc:
        raise ModelLoadError(f"{MANIFEST}: {exc.message}") from None
    except Exception as exc:
        raise ModelLoadError(
            f"{MANIFEST}: the key provider failed to unwrap the data key ({type(exc).__name__})"
        ) from None
    if len(data_key) != KEY_BYTES or not hmac.compare_digest(
        _mac(data_key, manifest.raw), manifest.mac
    ):
        raise ModelLoadError(f"{MANIFEST}: the manifest was altered after sealing")
    aead = AESGCM(_derive(data_key, _FILES_INFO))
    listed = {e.path + SUFFIX for e in manifest.files}
    extra = sorted(set(_plain_files(version_dir, loading=True)) - listed - {MANIFEST})
    if extra:
        raise ModelLoadError(f"{extra[0]}: not part of the sealed version (only sealed files)")
    files = []
    for e in manifest.files:
        source = version_dir / (e.path + SUFFIX)
        if not source.is_file():
            raise ModelLoadError(f"{e.path}{SUFFIX}: missing")
        expected = e.size + _TAG_BYTES * _chunk_count(e.size, manifest.chunk_size)
        actual = source.stat().st_size
        if actual != expected:
            raise ModelLoadError(
                f"{e.path}{SUFFIX}: {actual} bytes, but the manifest implies {expected}"
            )
        files.append(
            SealedFile(e.path, e.size, source, e.nonce, aead, manifest.chunk_size, model, version)
        )
    return files


@dataclass(frozen=True)
class _Entry:
    path: str
    size: int
    nonce: bytes


@dataclass(frozen=True)
class _Manifest:
    model: str
    version: int
    key_id: str
    wrapped_key: bytes
    chunk_size: int
    files: tuple[_Entry, ...]
    mac: str
    raw: dict[str, Any]
    """The manifest as read, which the MAC covers."""


def _read_manifest(path: Path) -> _Manifest:
    """Parse and check every field's type and range before anything is decrypted."""
    try:
        size = path.stat().st_size
        if size > _MAX_MANIFEST_BYTES:
            raise ModelLoadError(f"{MANIFEST}: {size} bytes is too large for a manifest")
        raw = json.loads(path.read_bytes())
    except OSError as exc:
        raise ModelLoadError(f"{MANIFEST}: cannot read: {exc.strerror}") from None
    except (ValueError, RecursionError):
        raise ModelLoadError(f"{MANIFEST}: not valid JSON") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{MANIFEST}: expected a JSON object")
    fmt = raw.get("format")
    if fmt != FORMAT:
        raise ModelLoadError(f"{MANIFEST}: format {fmt!r} is not read here (expected {FORMAT})")
    chunk = _field(raw, "chunk_size", int, "")
    if not _MIN_CHUNK <= chunk <= _MAX_CHUNK:
        raise ModelLoadError(f"{MANIFEST}: chunk_size {chunk} is out of range")
    files = _field(raw, "files", list, "")
    entries: list[_Entry] = []
    seen: set[str] = set()
    for i, item in enumerate(files):
        where = f"files[{i}]."
        if not isinstance(item, dict):
            raise ModelLoadError(f"{MANIFEST}: files[{i}]: expected an object")
        rel = _safe_path(_field(item, "path", str, where), where)
        if rel in seen:
            raise ModelLoadError(f"{MANIFEST}: {where}path: {rel!r} is listed twice")
        seen.add(rel)
        size = _field(item, "size", int, where)
        if size < 0:
            raise ModelLoadError(f"{MANIFEST}: {where}size: negative")
        nonce = _unb64(_field(item, "nonce", str, where), f"{where}nonce")
        if len(nonce) != _NONCE_PREFIX_BYTES:
            raise ModelLoadError(f"{MANIFEST}: {where}nonce: not {_NONCE_PREFIX_BYTES} bytes")
        entries.append(_Entry(rel, size, nonce))
    return _Manifest(
        model=_field(raw, "model", str, ""),
        version=_field(raw, "version", int, ""),
        key_id=_field(raw, "key_id", str, ""),
        wrapped_key=_unb64(_field(raw, "wrapped_key", str, ""), "wrapped_key"),
        chunk_size=chunk,
        files=tuple(entries),
        mac=_field(raw, "mac", str, ""),
        raw=raw,
    )


def _field(obj: dict[str, Any], name: str, kind: type[_T], where: str) -> _T:
    value = obj.get(name)
    # bool is an int to Python, never to this format.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ModelLoadError(f"{MANIFEST}: {where}{name}: expected {kind.__name__}")
    return value


def _safe_path(rel: str, where: str) -> str:
    """A relative path that stays inside the version directory, in normal form."""
    pure = PurePosixPath(rel)
    if (
        not rel
        or "\0" in rel
        or "\\" in rel
        or pure.is_absolute()
        or pure.as_posix() != rel
        or any(part in ("", ".", "..") for part in pure.parts)
    ):
        raise ModelLoadError(f"{MANIFEST}: {where}path: {rel!r} is not a plain relative path")
    return rel


def _unb64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ModelLoadError(f"{MANIFEST}: {where}: not base64") from None


def is_sealed(version_dir: Path) -> bool:
    return (version_dir / MANIFEST).is_file()


# ------------------------------------------------------------------ helpers


def _identify(version_dir: Path) -> tuple[str, int]:
    if not version_dir.is_dir():
        raise InvalidRequest(f"{version_dir}: not a directory")
    name = version_dir.name
    if not name.isdigit() or int(name) <= 0:
        raise InvalidRequest(
            f"{version_dir}: not a version directory (expected REPO/model/VERSION, VERSION > 0)"
        )
    model_dir = version_dir.resolve().parent
    return check_model_name(model_dir.name), int(name)


def _plain_files(version_dir: Path, loading: bool = False) -> list[str]:
    """Relative POSIX paths of the regular files below ``version_dir``, sorted.

    Links and special files are refused: what they point at is not the
    directory's to seal, and a link could make the server read outside it.
    """
    found: list[str] = []
    for root, dirs, names in os.walk(version_dir):
        for entry in [*dirs, *names]:
            path = Path(root) / entry
            rel = path.relative_to(version_dir).as_posix()
            if path.is_symlink():
                raise _problem(loading, f"{rel}: a symbolic link; only regular files")
            if entry in names and not path.is_file():
                raise _problem(loading, f"{rel}: not a regular file")
        found.extend((Path(root) / n).relative_to(version_dir).as_posix() for n in names)
    if not found and not loading:
        raise InvalidRequest(f"{version_dir}: no files to seal")
    return sorted(found)


def _problem(loading: bool, message: str) -> ModelportError:
    return ModelLoadError(message) if loading else InvalidRequest(message)


def _seal_file(
    source: Path,
    target: Path,
    aead: AESGCM,
    nonce: bytes,
    chunk_bytes: int,
    where: tuple[str, int, str],
) -> int:
    model, version, rel = where
    size = source.stat().st_size
    count = _chunk_count(size, chunk_bytes)
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as src, target.open("wb") as out:
        for i in range(count):
            plain = src.read(chunk_bytes)
            aad = _associated(model, version, rel, i, i == count - 1)
            out.write(aead.encrypt(nonce + i.to_bytes(4, "big"), plain, aad))
        if src.read(1):
            raise InvalidRequest(f"{rel}: grew while being sealed; seal it again when it is still")
        out.flush()
        os.fsync(out.fileno())
    return size


def _swap_in(version_dir: Path, sealed: Path) -> None:
    """Put the sealed directory in the version's place, then delete the plaintext.

    Between the two renames the version is briefly absent; a polling server
    then sees it gone and back, never half sealed.
    """
    aside = Path(tempfile.mkdtemp(prefix=f".{version_dir.name}.plain-", dir=version_dir.parent))
    aside.rmdir()
    os.rename(version_dir, aside)
    try:
        os.rename(sealed, version_dir)
    except BaseException:
        os.rename(aside, version_dir)
        raise
    shutil.rmtree(aside)


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _chunk_count(size: int, chunk: int) -> int:
    """Chunks in a file: at least one, so even an empty file carries a tag."""
    return max(1, -(-size // chunk))


def _associated(model: str, version: int, path: str, index: int, last: bool) -> bytes:
    # NUL cannot occur in model names or paths, so the fields cannot run together.
    return f"modelport-sealed-v1\0{model}\0{version}\0{path}\0{index}\0{int(last)}".encode()


def _derive(data_key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(data_key)


def _mac(data_key: bytes, manifest: dict[str, Any]) -> str:
    """HMAC of every manifest field but ``mac``, in a canonical JSON form."""
    body = {k: v for k, v in manifest.items() if k != "mac"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(_derive(data_key, _MAC_INFO), canonical, hashlib.sha256).hexdigest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
