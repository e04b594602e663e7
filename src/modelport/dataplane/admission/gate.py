"""The policy layer both transports call: authenticate, then authorize.

A transport hands over what it read from the wire (the Authorization value,
the peer address, the role the route needs and the model it names) and gets
back the caller's Identity, or a ModelportError to answer with. When
authentication is off the transports hold no Gate at all, so the open
(loopback) server pays one ``is None`` check per request.
"""

from __future__ import annotations

from modelport.dataplane.admission.audit import AuthAudit
from modelport.dataplane.admission.authenticate import Authenticator
from modelport.dataplane.admission.authorize import TenantOf, allows, denial
from modelport.dataplane.admission.identity import Identity, Role


class Gate:
    """Authentication and authorization for one server."""

    def __init__(self, authenticator: Authenticator, tenant_of: TenantOf, audit: AuthAudit) -> None:
        self.authenticator = authenticator
        self.tenant_of = tenant_of
        self.audit = audit

    async def admit(
        self, header: str | None, peer: str, need: Role, model: str | None = None
    ) -> Identity:
        """The caller, if it may do what needs ``need`` (on ``model``); else raises
        Unauthenticated, RateLimited (a blocked address) or PermissionDenied."""
        identity = await self.authenticator.authenticate(header, peer)
        self.check(identity, peer, need, model)
        return identity

    def check(self, identity: Identity, peer: str, need: Role, model: str | None) -> None:
        """Authorize an already authenticated caller (each message of a stream)."""
        if not allows(identity, need, model, self.tenant_of):
            self.audit.denied(identity, need, model, peer)
            raise denial(need, model)
