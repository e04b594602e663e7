"""Role names as written in configuration and credentials, and where the REST
transport leaves the caller in the ASGI scope.

The caller itself (:class:`~modelport.types.Identity`, with its
:class:`~modelport.types.Role`) is a core type, so that code outside the data
plane can read it.
"""

from __future__ import annotations

from modelport.types import Role

#: Role name (``viewer`` … ``admin``) -> Role; NONE has no name a user may write.
ROLE_NAMES: dict[str, Role] = {r.label: r for r in Role if r is not Role.NONE}


def parse_role(text: str) -> Role:
    """The role named ``text`` (``viewer`` … ``admin``); ValueError names the choices."""
    role = ROLE_NAMES.get(text.strip().lower())
    if role is None:
        raise ValueError(f"unknown role {text!r}; expected one of {', '.join(ROLE_NAMES)}")
    return role


#: Where the REST transport leaves the caller's Identity in the ASGI scope, for
#: the routes and the management API below it.
IDENTITY_SCOPE_KEY = "modelport.identity"

#: Where it leaves a ``model name -> bool`` test of which models the caller may
#: see, so listings (repository index, statistics, /api/v1/models) show only those.
VISIBLE_SCOPE_KEY = "modelport.visible"
