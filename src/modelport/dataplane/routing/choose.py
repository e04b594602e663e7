"""Which version serves a request without one: a pure function of policy and key.

Without a sticky key the draw is weighted random. With one, the key is hashed
(blake2b of model and key, stable across processes and restarts, unlike
Python's ``hash``) into one of ``BUCKETS`` buckets, and each route owns a
contiguous range of buckets sized by its weight, ranges laid out in version
order. A caller therefore stays on one version for as long as the weights
stay put, and when weights move only the keys in the moved part of a range
change version.

Worked example, two routes: at 90/10, version 1 owns buckets [0, 9000) and
version 2 owns [9000, 10000). At 80/20 the boundary moves to 8000, so the keys
in [8000, 9000) (10 % of them) move from 1 to 2, and no key moves from 2 to
1. With three or more routes a weight change in the middle shifts the
ranges after it too, so more keys than the change may move.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from modelport.dataplane.routing.policy import BUCKETS, TrafficPolicy


def bucket_of(model: str, key: str) -> int:
    """The sticky bucket of ``key`` for ``model``, in [0, BUCKETS)."""
    digest = hashlib.blake2b(
        model.encode("utf-8", "surrogatepass") + b"\0" + key.encode("utf-8", "surrogatepass"),
        digest_size=8,
    ).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def choose_version(
    model: str, policy: TrafficPolicy, key: str | None, rand: Callable[[], float]
) -> str:
    """The version for one request; routes with weight 0 are never chosen.

    ``rand`` returns a float in [0, 1) and is only called when ``key`` is None.
    """
    bucket = bucket_of(model, key) if key is not None else int(rand() * BUCKETS)
    bounds = policy.bounds
    for upper, version in bounds:
        if bucket < upper:
            return version
    return bounds[-1][1]  # only when rand() misbehaves and returns 1.0
