"""Regions and jurisdictions: the one matcher every residency check uses.

A node's region is written ``ae-dxb-1``; its first label, ``ae``, is the
jurisdiction. A residency is a list of entries, each a jurisdiction (``ae``:
any ``ae-*`` region) or a full region (``ae-dxb-1``: that region only), and
means "any of". There is no partial match: ``ae-dxb`` matches neither
``ae-dxb-1`` nor ``ae`` nodes, and ``ae`` does not match ``aes-x-1``.

It imports nothing of modelport, so that the data plane's admission (may this
node process the data), the control plane (may it serve the model) and the
payload log (may it keep the data) all ask the same question without
depending on one another.
"""

from __future__ import annotations

from collections.abc import Sequence


def jurisdiction_of(region: str) -> str:
    """The first label of a region: ``ae`` for ``ae-dxb-1``."""
    return region.split("-", 1)[0]


def region_allowed(region: str | None, residency: Sequence[str]) -> bool:
    """Whether a node in ``region`` satisfies ``residency`` (any entry; empty: anywhere).

    Fails closed: a node without a region satisfies only the empty list, since
    it cannot show where it is.
    """
    if not residency:
        return True
    if region is None:
        return False
    return region in residency or jurisdiction_of(region) in residency
