"""Master keys and the KeyProvider seam that wraps and unwraps data keys.

Each sealed version has its own random data key; only that key, wrapped,
is stored beside the files. A provider owns the master key, so a cloud KMS
can take the local key's place without the sealing format changing: the
manifest records the provider's ``key_id`` and the wrapped bytes, nothing
else about the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from modelport.errors import ConfigError, ModelLoadError

KEY_BYTES = 32
_NONCE_BYTES = 12
_WRAP_CONTEXT = b"modelport data key v1\x00"
_ID_CONTEXT = b"modelport master key id v1\x00"


class KeyProvider(Protocol):
    """Wraps data keys under a master key it never hands out.

    Implementations raise a ModelportError (ModelLoadError on unwrap) whose
    message says what failed without quoting key material; anything else a
    provider raises is reported by its type alone.
    """

    @property
    def key_id(self) -> str:
        """A stable, non-secret name of the master key (recorded in sealed.json)."""
        ...

    def wrap(self, data_key: bytes) -> bytes:
        """Encrypt a data key for storage beside the sealed files."""
        ...

    def unwrap(self, wrapped: bytes, key_id: str) -> bytes:
        """The data key back, or ModelLoadError when this master key cannot open it."""
        ...


def key_id_of(key: bytes) -> str:
    """A name for a master key derived by hashing it, so two hosts can compare keys.

    A domain-separation prefix keeps the identifier from equalling any other
    hash of the same bytes; 128 bits of it are enough to tell keys apart.
    """
    return hashlib.sha256(_ID_CONTEXT + key).hexdigest()[:32]


class LocalKeyProvider:
    """A 32-byte master key held in this process (from a file or the environment)."""

    __slots__ = ("_aead", "_key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ConfigError("master key", "", f"must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self._key_id = key_id_of(key)

    def __repr__(self) -> str:
        return f"LocalKeyProvider(key_id={self._key_id!r})"

    @property
    def key_id(self) -> str:
        return self._key_id

    def wrap(self, data_key: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data_key, _WRAP_CONTEXT + self._key_id.encode())

    def unwrap(self, wrapped: bytes, key_id: str) -> bytes:
        if key_id != self._key_id:
            raise ModelLoadError(
                f"sealed under master key id {key_id}, but the configured master key has id "
                f"{self._key_id} (wrong key)"
            )
        nonce, sealed = wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, sealed, _WRAP_CONTEXT + key_id.encode())
        except InvalidTag:
            raise ModelLoadError(
                "the master key cannot unwrap the data key (wrapped_key was altered)"
            ) from None


def parse_master_key(raw: bytes, source: str) -> bytes:
    """32 raw bytes, or base64 text of 32 bytes (surrounding whitespace ignored).

    The two are told apart by length alone: base64 of 32 bytes is 44
    characters, so a 32-byte file is always taken raw.
    """
    if len(raw) == KEY_BYTES:
        return raw
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            source, "", f"not a master key: expected {KEY_BYTES} raw bytes or base64 text"
        ) from None
    if len(key) != KEY_BYTES:
        raise ConfigError(
            source, "", f"the base64 text decodes to {len(key)} bytes, not {KEY_BYTES}"
        )
    return key


def read_master_key_file(path: Path) -> bytes:
    """The key in ``path``; a file far larger than any key is refused unread."""
    try:
        size = path.stat().st_size
        if size > 1024:
            raise ConfigError(str(path), "", f"{size} bytes is too large for a master key")
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read the master key: {exc.strerror}") from None
    return parse_master_key(raw, str(path))


def write_new_master_key(path: Path) -> str:
    """Create ``path`` (mode 0600, never overwriting) holding a random key as base64.

    Returns the new key's id.
    """
    key = os.urandom(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(str(path), "", "already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot create: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(base64.b64encode(key) + b"\n")
    return key_id_of(key)
