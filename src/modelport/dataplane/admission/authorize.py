"""The authorization decision: role, model scope and tenant → allow or deny.

Pure and synchronous, so it is tested as a table without servers. Deny by
default: an identity with no patterns reaches no model, and a tenant-scoped
identity reaches only models that declare its tenant.

The model check runs on the name the caller sent, before the model is
resolved, so the answer for an out-of-scope model that exists and for one
that does not is the same :class:`PermissionDenied` with the same message.
"""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatchcase
from functools import lru_cache

from modelport.errors import PermissionDenied
from modelport.types import Identity, Role

#: A model's tenant (its config parameter ``tenant``), or None for an untagged
#: or unknown model. Must not raise.
TenantOf = Callable[[str], str | None]


@lru_cache(maxsize=65536)
def in_scope(patterns: tuple[str, ...], model: str) -> bool:
    """Whether ``model`` matches one of ``patterns``; cached per (patterns, model).

    Bounded, so a caller cycling through random model names costs memory
    once per cache size, not per request.
    """
    return any(fnmatchcase(model, p) for p in patterns)


def allows(identity: Identity, need: Role, model: str | None, tenant_of: TenantOf) -> bool:
    """Whether ``identity`` may do something needing ``need`` (on ``model``, if given).

    Tenant rule: an identity without a tenant is not tenant-restricted; one
    with a tenant reaches only models whose tenant is the same (an unknown
    model has none, so it is denied exactly like another tenant's).
    """
    if identity.role < need:
        return False
    if model is None:
        return True
    if not in_scope(identity.models, model):
        return False
    return identity.tenant is None or tenant_of(model) == identity.tenant


def denial(need: Role, model: str | None) -> PermissionDenied:
    """The one refusal message: it names only what the caller sent."""
    if model is None:
        return PermissionDenied(f"permission denied: this needs the {need.label} role")
    return PermissionDenied(
        f"permission denied: this needs the {need.label} role on model {model!r}"
    )
