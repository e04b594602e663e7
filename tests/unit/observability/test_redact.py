"""Redaction of personal data in payload records: each detector, near misses, names."""

from __future__ import annotations

import pytest

from modelport.observability.redact import (
    CARD,
    EMAIL,
    EMIRATES_ID,
    PHONE,
    REDACTED,
    Redactor,
    luhn_ok,
    redact_text,
)


@pytest.mark.parametrize(
    "text",
    [
        "jane.doe@example.com",
        "a.b+tag@mail.example.co.ae",
        "x_y-z%1@sub-domain.gov.ae",
    ],
)
def test_email_addresses_are_replaced(text: str) -> None:
    assert redact_text(f"contact {text}, please") == f"contact {EMAIL}, please"


@pytest.mark.parametrize("text", ["user@localhost", "@example.com", "not an address", "a@b"])
def test_things_that_are_not_email_addresses_stay(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "784-1990-1234567-1",
        "784199012345671",
        "784-2004-7654321-0",
    ],
)
def test_emirates_id_numbers_with_and_without_dashes(text: str) -> None:
    assert redact_text(f"id {text}.") == f"id {EMIRATES_ID}."


@pytest.mark.parametrize(
    "text",
    [
        "785-1990-1234567-1",  # not 784
        "784-1890-1234567-1",  # no plausible year
        "784-1990-123456-1",  # one digit short
        "7841990123456712",  # one digit too many
    ],
)
def test_near_misses_of_emirates_id_are_not_emirates_ids(text: str) -> None:
    assert EMIRATES_ID not in redact_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "5500 0000 0000 0004",
        "3782 822463 10005",  # 15-digit American Express layout
        "6011000990139424",
    ],
)
def test_card_numbers_that_pass_luhn_are_replaced(text: str) -> None:
    assert redact_text(f"paid with {text} today") == f"paid with {CARD} today"


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # fails Luhn
        "4111111111111112",
        "123456789012",  # 12 digits: too short for a card
        "1700000000000",  # a millisecond timestamp (13 digits, fails Luhn)
    ],
)
def test_numbers_that_are_not_cards_stay(text: str) -> None:
    assert redact_text(text) == text


def test_luhn() -> None:
    assert luhn_ok("79927398713")
    assert not luhn_ok("79927398710")


@pytest.mark.parametrize(
    "text",
    [
        "+971 50 123 4567",
        "+971501234567",
        "00971 4 123 4567",
        "+44 20 7946 0958",
        "050 123 4567",
        "0501234567",
        "04 123 4567",
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
    ],
)
def test_phone_numbers_are_replaced(text: str) -> None:
    assert redact_text(f"call {text} now") == f"call {PHONE} now"


@pytest.mark.parametrize(
    "text",
    [
        "42",
        "12345",
        "123456789",  # a plain integer, no telephone shape
        "2024-01-15",
        "2024-01-15T10:30:00Z",
        "15/01/2024",
        "3.14159",
        "192.168.100.200",
        "+1 2",  # too few digits for an international number
        "version 1.2.3",
    ],
)
def test_dates_short_numbers_and_plain_integers_stay(text: str) -> None:
    assert redact_text(text) == text


def test_several_kinds_in_one_string() -> None:
    text = "a@b.io paid 4111 1111 1111 1111 from +971 50 123 4567 (id 784-1990-1234567-1)"
    assert redact_text(text) == f"{EMAIL} paid {CARD} from {PHONE} (id {EMIRATES_ID})"


def test_field_names_match_case_insensitively() -> None:
    r = Redactor(["Name", "email"])
    assert r.named("name") and r.named("NAME") and r.named("Email")
    assert not r.named("names")


def test_named_fields_are_withheld_and_strings_scanned_at_any_depth() -> None:
    r = Redactor(["name", "iban"])
    value = {
        "name": "Fatima Al Mansoori",
        "note": "write to f@example.ae",
        "count": 3,
        "customer": {"NAME": {"first": "x"}, "cards": ["4111111111111111", "plain"]},
        "rows": [{"iban": "AE070331234567890123456"}, 7, None, True],
    }
    assert r.value(value) == {
        "name": REDACTED,
        "note": f"write to {EMAIL}",
        "count": 3,
        "customer": {"NAME": REDACTED, "cards": [CARD, "plain"]},
        "rows": [{"iban": REDACTED}, 7, None, True],
    }


def test_long_text_without_matches_is_left_as_it_was() -> None:
    text = "a" * 100_000 + "@" + "1" * 1000
    assert redact_text(text) == text
