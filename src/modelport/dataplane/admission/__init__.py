"""Admission: the checks a request passes before it may cost the server work.

The order, as the architecture fixes it, is authenticate → authorize →
rate-limit → residency → deadline/queue bound. Only rate limiting lives here
so far; identities arrive with authentication, so limiters key on any string.
"""

from __future__ import annotations

from modelport.dataplane.admission.ratelimit import Decision, MemoryRateLimiter, RateLimiter

__all__ = ["Decision", "MemoryRateLimiter", "RateLimiter"]
