"""Admission: the checks a request passes before it may cost the server work.

The order, as the architecture fixes it, is authenticate → authorize →
rate-limit → residency → deadline/queue bound. ``gate.Gate`` does the first
two for both transports (``authenticate``, ``authorize``, ``jwt_tokens``);
rate limiting keys buckets on any string (``model:<name>``,
``identity:<id>``, ``authfail:<peer>``).
"""

from __future__ import annotations

from modelport.dataplane.admission.identity import parse_role
from modelport.dataplane.admission.ratelimit import Decision, MemoryRateLimiter, RateLimiter
from modelport.types import Identity, Role

__all__ = ["Decision", "Identity", "MemoryRateLimiter", "RateLimiter", "Role", "parse_role"]
