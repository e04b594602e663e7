"""Personal data out of payload records before anything reaches a disk.

Two passes over a record's values:

1. **By name.** A request parameter, or a tensor, whose name is one of the
   model's ``redact_fields`` (compared case-insensitively) loses its whole
   value: ``"[REDACTED]"``. This is for data no pattern can recognise
   (names, addresses, free text).
2. **By shape.** Every remaining string is scanned by detectors that replace
   what they find with a typed placeholder, so a reader still sees that an
   e-mail address was there without seeing it.

Detectors run most specific first (an Emirates ID is also a Luhn-valid
15-digit number, and would otherwise read as a card), and placeholders
carry no digits, so a later detector never fires on an earlier one's output.
False positives cost a little data in a log; false negatives leak, so the
patterns lean broad where the cost of a mistake is a redacted date-like
string, and narrow only where plain numbers (counts, ids, timestamps) would
otherwise vanish: a phone number needs a ``+``/``00`` prefix, a leading
``0`` or separators in a telephone shape, and a card number must pass Luhn.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

REDACTED = "[REDACTED]"
EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
CARD = "[CARD]"
EMIRATES_ID = "[EMIRATES_ID]"

# 784-YYYY-NNNNNNN-N, dashes optional; the year is a plausible birth year,
# which keeps arbitrary 15-digit numbers starting 784 from matching.
_EMIRATES_ID = re.compile(r"(?<![\d-])784-?(?:19|20)\d{2}-?\d{7}-?\d(?![\d-])")

# Bounded repeats (RFC 5321's 64-character local part, 63-character labels)
# keep a long run of letters without an "@" from costing quadratic time.
_EMAIL = re.compile(
    r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}"
)

# 13 to 19 digits, each pair optionally split by one space or dash.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")

_PHONE = re.compile(
    r"""
    (?<![\w+])
    (?:
        (?:\+|00)[1-9]\d{0,2}(?:[ .-]?\(?\d{1,4}\)?){2,5}   # +971 50 123 4567, 00971...
      | 0\d{1,2}[ .-]?\d{3}[ .-]?\d{4}                   # 050 123 4567, 04 123 4567
      | \(\d{3}\)[ .-]?\d{3}[ .-]\d{4}                   # (555) 123-4567
      | \d{3}[ .-]\d{3}[ .-]\d{4}                        # 555-123-4567
    )
    (?![\d-])
    """,
    re.VERBOSE,
)
_MIN_INTERNATIONAL_DIGITS = 8
_MAX_PHONE_DIGITS = 15


def luhn_ok(digits: str) -> bool:
    """Whether a string of digits passes the Luhn check every payment card number does."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _card(match: re.Match[str]) -> str:
    digits = _digits(match.group())
    return CARD if 13 <= len(digits) <= 19 and luhn_ok(digits) else match.group()


def _phone(match: re.Match[str]) -> str:
    text = match.group()
    count = len(_digits(text))
    if text.startswith(("+", "00")) and not (
        _MIN_INTERNATIONAL_DIGITS <= count <= _MAX_PHONE_DIGITS
    ):
        return text
    return PHONE


def redact_text(text: str) -> str:
    """``text`` with e-mail addresses, phone, card and Emirates ID numbers replaced."""
    if not text:
        return text
    text = _EMIRATES_ID.sub(EMIRATES_ID, text)
    if "@" in text:
        text = _EMAIL.sub(EMAIL, text)
    if any(ch.isdigit() for ch in text):
        text = _CARD.sub(_card, text)
        text = _PHONE.sub(_phone, text)
    return text


class Redactor:
    """One model's redaction rules, built once when its settings are first seen."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[str]) -> None:
        self._fields = frozenset(f.casefold() for f in fields)

    def named(self, name: str) -> bool:
        """Whether a parameter or tensor of this name is withheld whole."""
        return name.casefold() in self._fields

    def value(self, value: Any) -> Any:
        """A JSON-shaped value with named fields withheld and strings scanned, at any depth."""
        return _walk(value, self.named)


def _walk(value: Any, named: Callable[[str], bool]) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and named(k) else _walk(v, named)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_walk(v, named) for v in value]
    return value
