"""The server's log: text and JSON lines, libraries kept quiet, settings changed at run time."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime

import pytest

from modelport.errors import InvalidRequest
from modelport.observability.logs import (
    QUIET_LOGGERS,
    JsonFormatter,
    LogControl,
    TextFormatter,
    configure_logging,
    resolve_format,
)

TEXT_LINE = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d) (?P<level>[A-Z]+) +"
    r"(?P<logger>\S+) (?P<rest>.*)$"
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging changes the root logger: put back what pytest had."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, was in quiet.items():
        logging.getLogger(name).setLevel(was)


def _record(msg: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord(
        {"name": "modelport.test", "levelno": level, "levelname": logging.getLevelName(level)}
    )
    record.msg = msg
    record.__dict__.update(extra)
    return record


def test_a_text_line_has_local_time_level_logger_message_and_extras() -> None:
    line = TextFormatter().format(
        _record("listening", transport="HTTP", address="127.0.0.1:8000", port=8000)
    )
    found = TEXT_LINE.match(line)
    assert found is not None, line
    assert found["level"] == "INFO" and found["logger"] == "modelport.test"
    assert found["rest"] == "listening transport=HTTP address=127.0.0.1:8000 port=8000"
    # Local time with its offset, ISO 8601.
    assert datetime.fromisoformat(found["time"]).utcoffset() is not None


def test_text_values_that_are_not_plain_words_are_quoted_and_nothing_breaks_the_line() -> None:
    line = TextFormatter().format(
        _record(
            "first\nsecond",
            error="bad value: x",
            empty="",
            models=["a", "b"],
            ok=True,
            none=None,
            forged="x\nINFO modelport.server serving",
        )
    )
    assert "\n" not in line
    assert line.endswith(
        'first\\nsecond error="bad value: x" empty="" models=["a","b"] ok=true none=null '
        'forged="x\\nINFO modelport.server serving"'
    )


def test_a_text_line_is_followed_by_its_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("repository poll failed", logging.ERROR)
        record.exc_info = __import__("sys").exc_info()
    first, *rest = TextFormatter().format(record).splitlines()
    assert TEXT_LINE.match(first) is not None
    assert first.split()[1] == "ERROR"
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: boom"


def test_a_json_line_keeps_its_shape() -> None:
    entry = json.loads(JsonFormatter().format(_record("serving", http_port=8000)))
    assert entry.pop("time").endswith("Z")
    assert entry == {
        "level": "info",
        "logger": "modelport.test",
        "message": "serving",
        "http_port": 8000,
    }


def test_auto_is_text_on_a_terminal_and_json_otherwise() -> None:
    assert resolve_format("auto", Terminal()) == "text"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", Terminal()) == "json"
    assert resolve_format("text", io.StringIO()) == "text"


def _lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_configure_logging_writes_the_chosen_format_and_keeps_libraries_quiet() -> None:
    out = Terminal()
    configure_logging("info", "auto", out)
    logging.getLogger("modelport.server").info("serving", extra={"http_port": 8000})
    for name in ("uvicorn.error", "alembic.runtime.migration", "asyncio", "sqlalchemy.engine"):
        logging.getLogger(name).info("set-up chatter")
    logging.getLogger("uvicorn.error").warning("Invalid HTTP request received.")
    lines = _lines(out)
    assert len(lines) == 2, lines
    assert lines[0].endswith("modelport.server serving http_port=8000")
    assert lines[1].endswith("uvicorn.error Invalid HTTP request received.")


def test_configure_logging_again_replaces_the_earlier_set_up() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "text", first)
    configure_logging("info", "json", second)
    logging.getLogger("modelport.server").info("serving")
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["message"] == "serving"


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("debug", (True, True, True, 1)),
        ("info", (True, True, True, 0)),
        ("warning", (False, True, True, 0)),
        ("error", (False, False, True, 0)),
    ],
)
def test_the_log_level_reads_as_tritons_settings(
    level: str, expected: tuple[bool, bool, bool, int]
) -> None:
    settings = configure_logging(level, "json", io.StringIO()).triton_settings()
    assert settings == {
        "log_file": "",
        "log_info": expected[0],
        "log_warnings": expected[1],
        "log_errors": expected[2],
        "log_verbose_level": expected[3],
        "log_format": "json",
    }


def _written(control: LogControl, out: io.StringIO) -> list[str]:
    out.seek(0)
    out.truncate()
    log = logging.getLogger("modelport.test")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    return [json.loads(line)["message"] for line in _lines(out)]


def test_each_level_turns_on_and_off_as_the_settings_say() -> None:
    out = io.StringIO()
    control = configure_logging("info", "json", out)
    assert _written(control, out) == ["i", "w", "e"]
    control.update({"log_info": False})
    assert _written(control, out) == ["w", "e"]
    control.update({"log_verbose_level": 2, "log_errors": False})
    assert _written(control, out) == ["d", "w"]
    control.update({"log_warnings": False, "log_verbose_level": 0})
    assert _written(control, out) == []
    assert logging.getLogger("modelport.test").isEnabledFor(logging.CRITICAL) is False


def test_a_change_answers_what_changed_and_is_logged_in_the_new_format() -> None:
    out = io.StringIO()
    control = configure_logging("info", "json", out)
    assert control.update({"log_format": "text", "log_file": ""}) == {"log_format": "text"}
    line = _lines(out)[-1]
    assert TEXT_LINE.match(line) is not None
    assert line.endswith('log settings changed changed={"log_format":"text"}')
    assert control.triton_settings()["log_format"] == "text"
    # Triton's own format names are text with a timestamp.
    control.update({"log_format": "json"})
    control.update({"log_format": "ISO8601"})
    assert control.settings.format == "text"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"log_file": "/tmp/x.log"}, "'log_file' cannot be set"),
        ({"log_warning": True}, "unknown log setting 'log_warning'"),
        ({"log_info": 1}, "'log_info' must be true or false, got the number 1"),
        ({"log_errors": "false"}, "'log_errors' must be true or false, got a string"),
        ({"log_verbose_level": True}, "'log_verbose_level' must be a whole number, got a boolean"),
        ({"log_verbose_level": 1.5}, "'log_verbose_level' must be a whole number"),
        ({"log_verbose_level": -1}, "'log_verbose_level' must be from 0 to 4294967295"),
        ({"log_verbose_level": 1 << 32}, "4294967295 (an unsigned 32-bit integer), got 4294967296"),
        ({"log_format": "xml"}, "'log_format' must be 'text' or 'json'"),
        ({"log_format": None}, "'log_format' must be a string, got null"),
    ],
)
def test_a_bad_change_is_refused_naming_the_field_and_changes_nothing(
    changes: dict[str, object], message: str
) -> None:
    control = configure_logging("info", "json", io.StringIO())
    before = control.settings
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        control.update({"log_info": False, **changes})
    assert control.settings == before


def test_a_callers_change_is_recorded_once_and_a_refused_or_empty_one_not_at_all() -> None:
    recorded: list[tuple[str | None, dict[str, object]]] = []

    async def record(actor: str | None, changed: dict[str, object]) -> None:
        recorded.append((actor, changed))

    plain = configure_logging("info", "json", io.StringIO())
    control = plain.audited(record)
    after = asyncio.run(control.change({"log_info": False, "log_file": ""}, "ops-bot"))
    assert after == {**plain.triton_settings(), "log_info": False}
    assert plain.settings.info is False  # the same log, whichever control changed it
    assert recorded == [("ops-bot", {"log_info": False})]
    asyncio.run(control.change({"log_file": ""}, None))
    with pytest.raises(InvalidRequest):
        asyncio.run(control.change({"log_info": True, "log_file": "/tmp/x.log"}, None))
    assert recorded == [("ops-bot", {"log_info": False})]
    # A control built without a recorder changes the settings all the same.
    assert asyncio.run(plain.change({"log_info": True}, None))["log_info"] is True
