"""Argument checks for the store, run before any connection is taken.

Bodies are turned into plain JSON here once: what the store returns from a
write is then exactly what a later read returns (tuples become lists,
non-JSON values are refused instead of failing inside the database driver).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from modelport.controlplane.store.tables import ACTION_MAX, ACTOR_MAX, MODEL_NAME_MAX, STATE_MAX
from modelport.errors import InvalidRequest

#: Largest JSON body (policy, canary, event detail) the store keeps, in bytes.
MAX_BODY_BYTES = 1 << 20

#: Most events one ``history`` call returns.
MAX_HISTORY_LIMIT = 1000


def check_text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > limit:
        raise InvalidRequest(f"{what} is {len(value)} characters long; the limit is {limit}")
    return _refuse_nul(value, what)


def _refuse_nul(value: str, what: str) -> str:
    # PostgreSQL cannot store NUL in text or JSONB; refuse it on SQLite too,
    # so that a database moved between the two keeps working.
    if "\x00" in value:
        raise InvalidRequest(f"{what} contains a NUL character")
    _refuse_surrogates(value, what)
    return value


def _refuse_surrogates(text: str, what: str) -> None:
    # A lone UTF-16 surrogate (JSON "\ud800") is not Unicode text: neither
    # database driver can encode it, nor can the audit chain hash it.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"{what} contains an unpaired surrogate {text[exc.start]!r}, which is not valid text"
        ) from None


def check_model(model: object) -> str:
    return check_text(model, "model name", MODEL_NAME_MAX)


def check_actor(actor: object) -> str:
    return check_text(actor, "actor", ACTOR_MAX)


def check_action(action: object) -> str:
    return check_text(action, "action", ACTION_MAX)


def check_state(state: object) -> str:
    return check_text(state, "canary state", STATE_MAX)


def check_reason(reason: object) -> str | None:
    if reason is not None and not isinstance(reason, str):
        raise InvalidRequest(f"reason must be a string or absent, got {type(reason).__name__}")
    return None if reason is None else _refuse_nul(reason, "reason")


#: The largest integer both SQLite and PostgreSQL store (a signed 64-bit BIGINT).
MAX_INT = 2**63 - 1


def check_revision(revision: object, what: str) -> int:
    if isinstance(revision, bool) or not isinstance(revision, int) or not 1 <= revision <= MAX_INT:
        raise InvalidRequest(
            f"{what} must be a positive integer (at most {MAX_INT}), got {revision!r}"
        )
    return revision


def check_seq(seq: object) -> int:
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_INT:
        raise InvalidRequest(
            f"since_seq must be a non-negative integer (at most {MAX_INT}), got {seq!r}"
        )
    return seq


def check_states(states: Collection[str] | None) -> list[str] | None:
    if states is None:
        return None
    if isinstance(states, str):
        # A lone string is a Collection[str] of its letters; almost surely a slip.
        raise InvalidRequest(f"canary states must be a collection of names, got {states!r}")
    return [check_state(state) for state in states]


def check_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise InvalidRequest(
            f"history limit must be an integer from 1 to {MAX_HISTORY_LIMIT}, got {limit!r}"
        )
    return limit


def to_json(body: object, what: str) -> dict[str, Any]:
    """The body as the database will give it back, or InvalidRequest naming ``what``."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"{what} must be a JSON object, got {type(body).__name__}")
    try:
        text = json.dumps(body, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"{what} is not valid JSON: {exc}") from None
    if "\\u0000" in text:
        raise InvalidRequest(f"{what} contains a NUL character")
    if len(text) > MAX_BODY_BYTES:
        raise InvalidRequest(
            f"{what} is {len(text)} bytes as JSON; the limit is {MAX_BODY_BYTES} bytes"
        )
    _refuse_surrogates(json.dumps(body, ensure_ascii=False), what)
    decoded: dict[str, Any] = json.loads(text)
    return decoded
