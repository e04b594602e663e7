"""The one-line reason helper every runtime and command uses for foreign errors."""

from __future__ import annotations

from modelport.errors import first_line


def test_keeps_only_the_first_line_of_a_multi_line_message() -> None:
    exc = RuntimeError("  bad magic number\n  at frame 1\n  at frame 2  ")
    assert first_line(exc) == "bad magic number"


def test_an_empty_message_gives_the_type_name_or_the_chosen_fallback() -> None:
    assert first_line(ValueError("   ")) == "ValueError"
    assert first_line(ValueError(""), empty="") == ""
    assert first_line(ValueError(), empty="invalid graph") == "invalid graph"


def test_a_long_line_is_cut_at_the_limit() -> None:
    assert first_line(OSError("x" * 600), limit=300) == "x" * 300
    assert first_line(OSError("short"), limit=300) == "short"


def test_takes_text_as_well_as_exceptions() -> None:
    assert first_line("first\nsecond") == "first"
    assert first_line("  ") == ""
