"""Data residency: may this node process (or keep) data bound to some jurisdictions?

A node's region is written ``ae-dxb-1``; its first label, ``ae``, is the
jurisdiction. A residency is a list of entries, each a jurisdiction (``ae``:
any ``ae-*`` region) or a full region (``ae-dxb-1``: that region only); a
list means "any of". There is no partial match: ``ae-dxb`` matches neither
``ae-dxb-1`` nor ``ae`` nodes, and ``ae`` does not match ``aes-x-1``
(:func:`modelport.regions.region_allowed` is the matcher).

Two lists meet a node's region, and both must allow it:

- the model's ``modelport: {residency: [...]}``: where the model may process
  data at all. Checked once at load, by the control plane: a node outside it
  never serves the model (the version is UNAVAILABLE with the reason), so the
  request path need not repeat it.
- the request's data residency: the ``X-Data-Residency`` header (gRPC:
  ``x-data-residency`` metadata), or else the residency the server settings
  map the caller's tenant to (``tenant_residency``), or else none. Checked per
  request by :class:`ResidencyGuard`, before any validation or compute.

Fail closed: a node started without a region cannot show where it is, so it
serves no model with a residency and processes no data that declares one.
An empty list (or no header, no tenant mapping) is unconstrained.

Worked example, node ``eu-west-1``: data ``ae`` → refused; data ``eu`` or
``ae,eu-west-1`` → allowed; model ``[ae]`` → UNAVAILABLE on this node.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from modelport.dataplane.admission.audit import ANONYMOUS, AuditEvent, AuthAudit
from modelport.dataplane.routing.traffic import HeaderLookup
from modelport.errors import InvalidRequest, ResidencyRefused
from modelport.regions import region_allowed
from modelport.types import Identity, InferenceRequest

#: The request header (HTTP) and metadata key (gRPC, lower-case) naming the data's residency.
HEADER = "X-Data-Residency"

RESIDENCY_REFUSED = "residency.refused"

#: Entries one request may list at most; a longer header is refused unparsed.
MAX_ENTRIES = 16
MAX_HEADER_CHARS = 512

_ENTRY = re.compile(r"[a-z]{2,}(?:-[a-z0-9]+)*")


def parse_residency(text: str) -> tuple[str, ...]:
    """A comma-separated residency (``ae, sa-ruh-1``) as entries; ValueError says what is wrong.

    Entries are compared lower-case and without surrounding spaces.
    """
    if len(text) > MAX_HEADER_CHARS:
        raise ValueError(f"longer than {MAX_HEADER_CHARS} characters")
    entries = tuple(e.strip().lower() for e in text.split(","))
    if len(entries) > MAX_ENTRIES:
        raise ValueError(f"more than {MAX_ENTRIES} entries")
    for entry in entries:
        if not _ENTRY.fullmatch(entry):
            raise ValueError(
                f"entry {entry!r} is not a jurisdiction (e.g. 'ae') or a region (e.g. 'ae-dxb-1')"
            )
    return entries


def model_refusal(region: str | None, residency: Sequence[str]) -> str | None:
    """Why a node in ``region`` must not serve a model with ``residency``, or None."""
    if region_allowed(region, residency):
        return None
    allowed = ", ".join(residency)
    if region is None:
        return (
            f"the model's residency is [{allowed}] and this node has no region "
            "(start it with --region): it cannot show that it is in an allowed one"
        )
    return f"the model's residency is [{allowed}]; this node's region {region!r} is not in it"


def data_refusal(region: str | None, data: Sequence[str], origin: str) -> str | None:
    """Why data bound to ``data`` (taken from ``origin``) must not be processed here, or None."""
    if region_allowed(region, data):
        return None
    where = f"this node's region {region!r}" if region is not None else "this node (no region)"
    return (
        f"data residency [{', '.join(data)}] ({origin}) does not allow processing in {where}; "
        "send the request to a node in an allowed region"
    )


class ResidencyGuard:
    """The per-request residency check: find the data's residency, refuse and audit.

    The common case costs one header lookup and one tenant lookup.
    """

    def __init__(
        self,
        region: str | None,
        tenant_residency: Mapping[str, Sequence[str]],
        audit: AuthAudit | None,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.region = region
        self.tenants = {t: tuple(r) for t, r in tenant_residency.items()}
        self.audit = audit
        self.on_refused = on_refused
        """Called with the model's name on every refusal (the metric)."""

    def requested(
        self,
        request: InferenceRequest | None,
        header: HeaderLookup | None,
        identity: Identity | None = None,
    ) -> tuple[tuple[str, ...], str]:
        """The request's data residency and where it came from (empty: unconstrained).

        ``identity`` is the caller from the Call; None reads the request's own.
        Both sources are known before a body is read, so ``request`` may be
        None (admission's first phase).
        """
        value = header(HEADER) if header is not None else None
        if value is not None:
            try:
                return parse_residency(value), f"{HEADER} header"
            except ValueError as exc:
                raise InvalidRequest(f"{HEADER} header: {exc}") from None
        if identity is None and request is not None:
            identity = request.identity
        if identity is not None and identity.tenant is not None:
            mapped = self.tenants.get(identity.tenant)
            if mapped:
                return mapped, f"tenant {identity.tenant!r}"
        return (), ""

    def refusal(
        self,
        request: InferenceRequest | None,
        header: HeaderLookup | None,
        identity: Identity | None = None,
    ) -> str | None:
        """Why this request's data must not be processed here, or None (raises InvalidRequest
        for a malformed header)."""
        data, origin = self.requested(request, header, identity)
        if not data:
            return None
        return data_refusal(self.region, data, origin)

    def refuse(
        self,
        model: str,
        request: InferenceRequest | None,
        reason: str,
        protocol: str,
        identity: Identity | None = None,
    ) -> None:
        """Count and audit a refusal, then raise ResidencyRefused; ``model`` is a served name."""
        if self.on_refused is not None:
            self.on_refused(model)
        if self.audit is not None:
            if identity is None and request is not None:
                identity = request.identity
            actor = identity.actor if identity is not None else ANONYMOUS
            detail: dict[str, object] = {
                "region": self.region,
                "reason": reason,
                "protocol": protocol,
            }
            if identity is not None:
                detail["identity"] = identity.id
            # Sampled per caller, model and protocol: a client retrying in a loop
            # leaves one record a second with the count of the rest.
            self.audit.offer(
                AuditEvent(model, RESIDENCY_REFUSED, actor, detail),
                f"{actor}|{model}|{protocol}",
            )
        raise ResidencyRefused(f"model {model!r}: {reason}")
