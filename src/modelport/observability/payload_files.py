"""Payload day files on disk: appending, sealing, reading back and deleting by age.

Layout: ``DIR/<model>/<YYYY-MM-DD>.jsonl``, one file per model per UTC day,
directories 0700 and files 0600. Each line is one JSON object written with
``ensure_ascii``, so no value (a request id holding ``\\n`` or ``\\r``, or
U+2028) can end a line early and forge a record.

A sealed file interleaves two kinds of line::

    {"payload_log": 1, "model": "m", "day": "2024-05-01", "key_id": "...",
     "wrapped_key": "<base64>"}                      a segment header
    {"sealed": "<base64 of nonce (12 bytes) + AES-256-GCM ciphertext>"}

Every time this process first appends to a file it starts a segment: a
fresh random data key, wrapped by the key provider (the master key never
leaves it), in a header line; the records after it are sealed under that
data key with the header's model and day as associated data, so a header
edited to claim another model or day no longer opens its records. What
this cannot detect is a whole sealed line deleted or a segment removed;
payload logs are evidence of traffic, not an audit trail (the audit log's
hash chain is).

Nothing here imports the control plane: the key provider arrives as any
object with ``key_id``, ``wrap`` and ``unwrap``, which the control plane's
KeyProvider is.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from modelport.errors import InvalidRequest, ModelportError
from modelport.private_dirs import make_private_dirs

SUFFIX = ".jsonl"
FORMAT = 1
_NONCE_BYTES = 12
_KEY_BYTES = 32
_AAD_PREFIX = b"modelport payload v1\x00"
#: Retention for directories of models not served now: their settings are unknown.
DEFAULT_RETENTION_DAYS = 30


class KeyWrapper(Protocol):
    """The part of a key provider that payload sealing needs."""

    @property
    def key_id(self) -> str: ...

    def wrap(self, data_key: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, key_id: str) -> bytes: ...


def day_of(timestamp: float) -> str:
    """The UTC calendar day of a Unix time, as the file name uses it."""
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d")


def _aad(model: str, day: str) -> bytes:
    # NUL cannot occur in a model name or a date, so the fields cannot run together.
    return _AAD_PREFIX + model.encode() + b"\x00" + day.encode()


@dataclass
class _Segment:
    aead: AESGCM
    aad: bytes


class DayFiles:
    """Appends finished lines to day files; used by one writer thread only."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._segments: dict[Path, _Segment] = {}

    def path(self, model: str, day: str) -> Path:
        return self.directory / model / f"{day}{SUFFIX}"

    def append(
        self, model: str, day: str, lines: list[bytes], keys: KeyWrapper | None = None
    ) -> None:
        """Append lines (each without its newline), sealed when ``keys`` is given.

        Raises OSError when the file cannot be written; a key provider's own
        error passes through for the caller to count.
        """
        path = self.path(model, day)
        if not path.parent.is_dir():
            # Each level made here is the owner's only (mkdir's parents= would
            # give the levels above the default mode, listing model names to all).
            make_private_dirs(path.parent)
        out: list[bytes] = []
        if keys is not None:
            segment = self._segments.get(path)
            if segment is None or not path.exists():
                segment, header = _new_segment(model, day, keys)
                out.append(header)
                # Only today's file is ever appended to: forget the others' keys.
                self._segments = {p: s for p, s in self._segments.items() if p.stem == day}
                self._segments[path] = segment
            out.extend(_seal(segment, line) for line in lines)
        else:
            out.extend(lines)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            # One write per batch: a reader never sees half of a line another write split.
            os.write(fd, b"".join(line + b"\n" for line in out))
        finally:
            os.close(fd)


def _new_segment(model: str, day: str, keys: KeyWrapper) -> tuple[_Segment, bytes]:
    data_key = AESGCM.generate_key(bit_length=_KEY_BYTES * 8)
    header = {
        "payload_log": FORMAT,
        "model": model,
        "day": day,
        "key_id": keys.key_id,
        "wrapped_key": base64.b64encode(keys.wrap(data_key)).decode("ascii"),
    }
    line = json.dumps(header, ensure_ascii=True, separators=(",", ":")).encode()
    return _Segment(AESGCM(data_key), _aad(model, day)), line


def _seal(segment: _Segment, line: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    sealed = base64.b64encode(nonce + segment.aead.encrypt(nonce, line, segment.aad))
    return b'{"sealed":"' + sealed + b'"}'


def read_records(path: Path, keys: KeyWrapper | None) -> Iterator[dict[str, Any]]:
    """Every record of a day file, sealed or not, in order.

    Raises InvalidRequest naming the line when a line is not a record, a
    sealed line comes before any header, or a record does not open (wrong
    master key, or the line or its header was altered).
    """
    segment: _Segment | None = None
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                raise InvalidRequest(f"{where}: not a JSON object") from None
            if not isinstance(obj, dict):
                raise InvalidRequest(f"{where}: not a JSON object")
            if "payload_log" in obj:
                segment = _open_segment(obj, keys, where)
            elif "sealed" in obj:
                if segment is None:
                    raise InvalidRequest(f"{where}: a sealed record before any key header")
                yield _open_record(segment, obj["sealed"], where)
            else:
                yield obj


def _open_segment(header: dict[str, Any], keys: KeyWrapper | None, where: str) -> _Segment:
    if header.get("payload_log") != FORMAT:
        raise InvalidRequest(f"{where}: header format {header.get('payload_log')!r} not read here")
    model, day = header.get("model"), header.get("day")
    key_id, wrapped = header.get("key_id"), header.get("wrapped_key")
    if not all(isinstance(v, str) for v in (model, day, key_id, wrapped)):
        raise InvalidRequest(f"{where}: header lacks model, day, key_id or wrapped_key")
    assert isinstance(model, str) and isinstance(day, str)
    assert isinstance(key_id, str) and isinstance(wrapped, str)
    if keys is None:
        raise InvalidRequest(f"{where}: sealed records; a master key is needed to read them")
    try:
        data_key = keys.unwrap(_unb64(wrapped, where), key_id)
    except ModelportError as exc:
        raise InvalidRequest(f"{where}: {exc.message}") from None
    except Exception as exc:
        raise InvalidRequest(
            f"{where}: the key provider failed to unwrap the data key ({type(exc).__name__})"
        ) from None
    if len(data_key) != _KEY_BYTES:
        raise InvalidRequest(f"{where}: the unwrapped data key is not {_KEY_BYTES} bytes")
    return _Segment(AESGCM(data_key), _aad(model, day))


def _open_record(segment: _Segment, sealed: Any, where: str) -> dict[str, Any]:
    if not isinstance(sealed, str):
        raise InvalidRequest(f"{where}: 'sealed' is not a string")
    blob = _unb64(sealed, where)
    try:
        plain = segment.aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], segment.aad)
    except (InvalidTag, ValueError):
        raise InvalidRequest(
            f"{where}: authentication failed (the record or its header was altered)"
        ) from None
    record = json.loads(plain)
    if not isinstance(record, dict):
        raise InvalidRequest(f"{where}: the sealed record is not a JSON object")
    return record


def _unb64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{where}: not base64") from None


def expired(day: str, today: dt.date, retention_days: int) -> bool:
    """Whether a day file may go: its newest record is at least ``retention_days`` old.

    A file for day D holds records up to D+1 00:00 UTC, so it goes once
    today > D + retention_days; every record is kept at least retention_days
    and at most one day longer. A name that is not a date is never deleted.
    """
    try:
        when = dt.date.fromisoformat(day)
    except ValueError:
        return False
    return (today - when).days > retention_days


def sweep(directory: Path, retention: Mapping[str, int], now: float) -> list[Path]:
    """Delete expired day files under ``directory``; returns what was deleted.

    ``retention`` maps a model to its days; a model directory not in it (a
    model no longer served) keeps DEFAULT_RETENTION_DAYS, so nothing is kept
    forever merely because its model went away.
    """
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    deleted: list[Path] = []
    if not directory.is_dir():
        return deleted
    for model_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
        days = retention.get(model_dir.name, DEFAULT_RETENTION_DAYS)
        for file in sorted(model_dir.glob(f"*{SUFFIX}")):
            if file.is_file() and expired(file.name[: -len(SUFFIX)], today, days):
                try:
                    file.unlink()
                except FileNotFoundError:
                    continue
                deleted.append(file)
    return deleted
