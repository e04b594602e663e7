"""The server's log: one line per record on stderr, for people or for collectors.

Two formats, chosen at start (``--log-format``) and changeable at run time:

- ``text``: for a terminal; local time in ISO 8601, level, logger, message,
  then the record's extras as ``key=value``::

      2026-12-07T21:46:13.293+04:00 INFO  modelport.server listening transport=HTTP
      address=127.0.0.1:8000

  (one line; wrapped here).

- ``json``: one object per line (``time`` in UTC, ``level``, ``logger``,
  ``message`` and the extras as fields), for log collectors.

``auto`` picks text when stderr is a terminal and JSON otherwise.

Which levels are written follows Triton's logging extension (``/v2/logging``):
info, warnings and errors each on or off, and verbose (debug) messages on
from ``log_verbose_level`` 1. :class:`LogControl` reads and changes those
settings, and records each change (:meth:`LogControl.change`), for REST's
``/v2/logging`` and gRPC's ``LogSettings`` alike; the transports only
translate its Triton-shaped dictionary.

Libraries' set-up chatter (uvicorn's start and stop lines, alembic's
migrations, asyncio, gRPC, SQLAlchemy, httpx) is held at warning: what they
say at info is either said by modelport itself (one line per listener) or
of no use to an operator.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal, TextIO

from modelport.errors import InvalidRequest

_log = logging.getLogger("modelport.logs")

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}

#: Libraries whose records below warning are dropped, whatever the server's level.
QUIET_LOGGERS = (
    "alembic",
    "asyncio",
    "grpc",
    "httpcore",
    "httpx",
    "multipart",
    "onnxruntime",
    "python_multipart",
    "sqlalchemy",
    "uvicorn",
)

Format = Literal["text", "json"]

_FORMATS: dict[str, Format] = {"text": "text", "json": "json"}
#: Triton's ``log_format`` values too: both are text with a timestamp.
_SETTABLE_FORMATS: dict[str, Format] = {**_FORMATS, "default": "text", "ISO8601": "text"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC), level, logger, message, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(extras_of(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """One readable line per record; a traceback, when there is one, follows it."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).astimezone()
        parts = [
            stamp.isoformat(timespec="milliseconds"),
            f"{record.levelname:<5}",
            record.name,
            _escaped(record.getMessage()),
        ]
        parts += [f"{key}={_value(value)}" for key, value in extras_of(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def extras_of(record: logging.LogRecord) -> dict[str, Any]:
    """What the call passed as ``extra``: the record's attributes logging did not set."""
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD and not key.startswith("_")
    }


def _escaped(text: str) -> str:
    """``text`` with control characters escaped, so one record stays one line
    (a newline in a message or a value cannot forge a second record)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return json.dumps(text, ensure_ascii=False)[1:-1]
    return text


def _value(value: object) -> str:
    """An extra's value as text: bare when it is a plain word, JSON otherwise."""
    if isinstance(value, str):
        if value and not any(c.isspace() or c in "\"'=\\" for c in value):
            return _escaped(value)
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


_FORMATTERS: dict[str, logging.Formatter] = {"text": TextFormatter(), "json": JsonFormatter()}


@dataclass(frozen=True, slots=True)
class LogSettings:
    """Which records are written, and how; Triton's logging settings, without the file."""

    info: bool = True
    warnings: bool = True
    errors: bool = True
    verbose_level: int = 0
    """0: no debug records; 1 or more: debug records too."""
    format: Format = "json"

    @classmethod
    def of_level(cls, level: str, log_format: Format) -> LogSettings:
        """The settings ``--log-level`` means: that level and every one above it."""
        level = level.lower()
        return cls(
            info=level in ("debug", "info"),
            warnings=level in ("debug", "info", "warning"),
            verbose_level=1 if level == "debug" else 0,
            format=log_format,
        )

    def allows(self, levelno: int) -> bool:
        if levelno >= logging.ERROR:
            return self.errors
        if levelno >= logging.WARNING:
            return self.warnings
        if levelno >= logging.INFO:
            return self.info
        return self.verbose_level > 0

    def threshold(self) -> int:
        """The lowest level written, so a logger skips building records nobody writes."""
        for level, on in (
            (logging.DEBUG, self.verbose_level > 0),
            (logging.INFO, self.info),
            (logging.WARNING, self.warnings),
            (logging.ERROR, self.errors),
        ):
            if on:
                return level
        return logging.CRITICAL + 1


class ServerLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root logger's one handler: writes the records ``settings`` allows, as it says."""

    def __init__(self, stream: TextIO, settings: LogSettings) -> None:
        super().__init__(stream)
        self.settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        return self.settings.allows(record.levelno) and bool(super().filter(record))

    def format(self, record: logging.LogRecord) -> str:
        # The settings object is replaced whole, never changed, so one read is consistent.
        return _FORMATTERS[self.settings.format].format(record)


#: Triton's setting names, each with the JSON type its value must have.
_FIELDS: dict[str, type] = {
    "log_file": str,
    "log_info": bool,
    "log_warnings": bool,
    "log_errors": bool,
    "log_verbose_level": int,
    "log_format": str,
}

_UINT32_MAX = 2**32 - 1

#: Records a change that took effect: (who asked, or None with authentication
#: off; the settings changed, as the caller gave them).
OnChange = Callable[[str | None, dict[str, Any]], Awaitable[None]]


class LogControl:
    """Reads and changes the log settings at run time (Triton's logging extension)."""

    def __init__(self, handler: ServerLogHandler, on_change: OnChange | None = None) -> None:
        self.handler = handler
        self.on_change = on_change

    def audited(self, on_change: OnChange) -> LogControl:
        """A control over the same log whose :meth:`change` records each change with
        ``on_change`` (the audit log: the log is set up before the audit log exists)."""
        return LogControl(self.handler, on_change)

    @property
    def settings(self) -> LogSettings:
        return self.handler.settings

    def apply(self, settings: LogSettings) -> None:
        """Write what ``settings`` allows from now on."""
        self.handler.settings = settings
        # setLevel also clears every logger's cached isEnabledFor answers.
        logging.getLogger().setLevel(settings.threshold())

    def triton_settings(self) -> dict[str, Any]:
        """The settings in Triton's shape; ``log_file`` is "" (the log goes to stderr)."""
        s = self.settings
        return {
            "log_file": "",
            "log_info": s.info,
            "log_warnings": s.warnings,
            "log_errors": s.errors,
            "log_verbose_level": s.verbose_level,
            "log_format": s.format,
        }

    def update(self, changes: Mapping[str, object]) -> dict[str, Any]:
        """Apply Triton-shaped ``changes``; returns what changed, as given.

        Every field is checked before any is applied, so a refused request
        changes nothing. InvalidRequest names the field: an unknown one, a
        value of the wrong type, or ``log_file`` naming a file (a caller may
        not choose where the server writes; "", the console, is where it
        writes already).
        """
        new = self.settings
        changed: dict[str, Any] = {}
        for name, value in changes.items():
            expected = _FIELDS.get(name)
            if expected is None:
                known = ", ".join(_FIELDS)
                raise InvalidRequest(f"unknown log setting {name!r} (known: {known})")
            # bool is an int to Python, never to JSON: true is no verbose level.
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise InvalidRequest(
                    f"log setting {name!r} must be {_JSON_TYPE[expected]}, got {_json_type(value)}"
                )
            if name == "log_file":
                if value != "":
                    raise InvalidRequest(
                        "log setting 'log_file' cannot be set: the server writes its log "
                        "to stderr, and a caller may not choose a file for it to write"
                    )
                continue
            if name == "log_verbose_level":
                assert isinstance(value, int)
                if not 0 <= value <= _UINT32_MAX:
                    raise InvalidRequest(
                        "log setting 'log_verbose_level' must be from 0 to "
                        f"{_UINT32_MAX} (an unsigned 32-bit integer), got {value}"
                    )
                new = replace(new, verbose_level=value)
            elif name == "log_format":
                new = replace(new, format=_format_of(value))
            elif name == "log_info":
                new = replace(new, info=bool(value))
            elif name == "log_warnings":
                new = replace(new, warnings=bool(value))
            else:
                new = replace(new, errors=bool(value))
            changed[name] = value
        if new != self.settings:
            self.apply(new)
            # After the change: turning info off is not announced at info.
            _log.info("log settings changed", extra={"changed": changed})
        return changed

    async def change(self, changes: Mapping[str, object], actor: str | None) -> dict[str, Any]:
        """A caller's change: :meth:`update`, then the change recorded for ``actor``
        (None with authentication off); returns every setting after it.

        Both transports change the settings through here, so a change is
        recorded the same way whichever protocol asked. A request that
        changed nothing records nothing.
        """
        changed = self.update(changes)
        if changed and self.on_change is not None:
            await self.on_change(actor, changed)
        return self.triton_settings()


_JSON_TYPE = {str: "a string", bool: "true or false", int: "a whole number"}


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _format_of(value: object) -> Format:
    chosen = _SETTABLE_FORMATS.get(value) if isinstance(value, str) else None
    if chosen is not None:
        return chosen
    raise InvalidRequest(
        f"log setting 'log_format' must be 'text' or 'json' (or Triton's 'default' or "
        f"'ISO8601', both text), got {value!r}"
    )


def resolve_format(log_format: str, stream: TextIO) -> Format:
    """``auto`` as it applies to ``stream``: text on a terminal, JSON otherwise."""
    chosen = _FORMATS.get(log_format)
    if chosen is not None:
        return chosen
    if log_format != "auto":
        raise ValueError(f"unknown log format {log_format!r}")
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def configure_logging(
    level: str, log_format: str = "auto", stream: TextIO | None = None
) -> LogControl:
    """Send every modelport and library log to stderr (or ``stream``), one line per record.

    ``level`` is the threshold (debug, info, warning, error); ``log_format``
    is ``text``, ``json`` or ``auto``. Calling it again replaces the earlier
    set-up. Returns the control that changes these settings at run time.
    """
    out = stream if stream is not None else sys.stderr
    settings = LogSettings.of_level(level, resolve_format(log_format, out))
    handler = ServerLogHandler(out, settings)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    control = LogControl(handler)
    control.apply(settings)
    return control
