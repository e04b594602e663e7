"""The policy layer both transports call: authenticate, then authorize.

A transport hands over what it read from the wire (the Authorization value,
the peer address, the role the route needs and the model it names) and gets
back the caller's Identity, or a ModelportError to answer with. When
authentication is off the transports hold no Gate at all, so the open
(loopback) server pays one ``is None`` check per request.
"""

from __future__ import annotations

from collections.abc import Callable

from modelport.dataplane.admission.audit import AuthAudit
from modelport.dataplane.admission.authenticate import Authenticator
from modelport.dataplane.admission.authorize import TenantOf, allows, denial
from modelport.dataplane.admission.certificates import ClientCertificate
from modelport.dataplane.admission.watch import Watch
from modelport.errors import Unauthenticated
from modelport.types import Identity, Role


class Gate:
    """Authentication and authorization for one server."""

    def __init__(
        self,
        authenticator: Authenticator,
        tenant_of: TenantOf,
        audit: AuthAudit,
        watch: Watch | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.tenant_of = tenant_of
        self.audit = audit
        self.watch = watch
        """Traffic anomaly detectors fed by every admission and authentication failure."""

    async def admit(
        self,
        header: str | None,
        peer: str,
        need: Role,
        model: str | None = None,
        certificate: ClientCertificate | None = None,
    ) -> Identity:
        """The caller, if it may do what needs ``need`` (on ``model``); else raises
        Unauthenticated, RateLimited (a blocked address) or PermissionDenied.
        ``certificate`` is the connection's verified mTLS client certificate."""
        identity = await self.authenticate(header, peer, certificate)
        self.check(identity, peer, need, model)
        return identity

    async def authenticate(
        self, header: str | None, peer: str, certificate: ClientCertificate | None = None
    ) -> Identity:
        """The caller, whatever it asks for; Unauthenticated or RateLimited otherwise.

        Used alone where a request matched no route: it is answered after the
        caller is known, the same way whoever asks."""
        try:
            identity = await self.authenticator.authenticate(header, peer, certificate)
        except Unauthenticated:
            if self.watch is not None:
                self.watch.failed(peer)
            raise
        if self.watch is not None:
            self.watch.admitted(identity)
        return identity

    def visible(self, identity: Identity) -> Callable[[str], bool]:
        """Which models ``identity`` may see: listings show only those, so names of
        models outside its scope or tenant never reach it."""
        tenant_of = self.tenant_of
        return lambda name: allows(identity, Role.VIEWER, name, tenant_of)

    def check(self, identity: Identity, peer: str, need: Role, model: str | None) -> None:
        """Authorize an already authenticated caller (each message of a stream)."""
        if not allows(identity, need, model, self.tenant_of):
            self.audit.denied(identity, need, model, peer)
            raise denial(need, model)
