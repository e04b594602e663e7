"""Who is calling: the identity every credential kind (API key, JWT) resolves to.

Roles are ordered; each includes the ones below it, so a check is one
comparison. An identity is scoped to model name patterns (``fnmatch``,
case-sensitive) and, optionally, a tenant; it carries its own rate limit when
its key was created with one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Role(IntEnum):
    """What a caller may do; a higher role includes every lower one."""

    NONE = 0
    """An authenticated caller granted nothing (a JWT without a known role)."""
    VIEWER = 1
    """Health, metadata, config, statistics, repository index, metrics, reads of /api/v1."""
    INVOKER = 2
    """Plus inference."""
    OPERATOR = 3
    """Plus load, unload, traffic policies, canaries, version load and unload."""
    ADMIN = 4
    """Plus API keys and policies."""

    @property
    def label(self) -> str:
        return self.name.lower()


ROLE_NAMES: dict[str, Role] = {r.label: r for r in Role if r is not Role.NONE}


def parse_role(text: str) -> Role:
    """The role named ``text`` (``viewer`` … ``admin``); ValueError names the choices."""
    role = ROLE_NAMES.get(text.strip().lower())
    if role is None:
        raise ValueError(f"unknown role {text!r}; expected one of {', '.join(ROLE_NAMES)}")
    return role


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller.

    ``id`` is stable and unique (``key:<id>`` or ``jwt:<issuer>#<subject>``) and
    keys per-identity state such as rate-limit buckets; ``name`` is what the
    audit log shows as the actor. ``expires_at`` is a wall-clock time in
    seconds since the epoch, or None; a cached identity is refused once past it.
    """

    id: str
    name: str
    role: Role
    models: tuple[str, ...]
    tenant: str | None = None
    rate: float | None = None
    burst: int | None = None
    expires_at: float | None = None

    @property
    def actor(self) -> str:
        """The name recorded as the actor of changes this identity makes."""
        return self.name


#: Where the REST transport leaves the caller's Identity in the ASGI scope, for
#: the routes and the management API below it.
IDENTITY_SCOPE_KEY = "modelport.identity"

#: Where it leaves a ``model name -> bool`` test of which models the caller may
#: see, so listings (repository index, statistics, /api/v1/models) show only those.
VISIBLE_SCOPE_KEY = "modelport.visible"
