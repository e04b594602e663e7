"""Triton's system shared-memory extension: registered regions, and tensors through them.

``registry.Registry`` keeps each caller's regions (docs/shared-memory.md has
the rules and limits); ``session.Session`` is one request's access to them,
handed to the codecs. The transports build a Session per inference call that
names a region, and close it when the answer is written.
"""

from modelport.dataplane.sharedmemory.registry import (
    MAX_BYTES,
    MAX_BYTES_PER_OWNER,
    MAX_REGIONS,
    MAX_REGIONS_PER_OWNER,
    Owner,
    RegionStatus,
    Registry,
    owner_of,
)
from modelport.dataplane.sharedmemory.session import Session

#: The answer of every CUDA shared-memory endpoint, on both transports.
CUDA_UNSUPPORTED = "CUDA shared memory is not supported on this server"

__all__ = [
    "CUDA_UNSUPPORTED",
    "MAX_BYTES",
    "MAX_BYTES_PER_OWNER",
    "MAX_REGIONS",
    "MAX_REGIONS_PER_OWNER",
    "Owner",
    "RegionStatus",
    "Registry",
    "Session",
    "owner_of",
]
