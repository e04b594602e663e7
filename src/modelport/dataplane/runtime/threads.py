"""How backends size their thread pools, read from Triton's parameters.

Every batch runs on an instance thread while the event loop decodes and
encodes requests on its own core, so by default a backend gets
``(cores - 1) / instances`` threads (at least 1): instances x threads never
oversubscribes the machine. ``intra_op_thread_count`` overrides it.
"""

from __future__ import annotations

import os

from modelport.config.model import ModelConfig
from modelport.errors import ModelLoadError


def int_parameter(config: ModelConfig, key: str, minimum: int = 1) -> int | None:
    """An integer Triton parameter of at least ``minimum``, or None when not set."""
    raw = config.parameter(key)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ModelLoadError(f"parameters.{key}: expected an integer, got {raw!r}") from None
    if value < minimum:
        raise ModelLoadError(f"parameters.{key}: must be at least {minimum}, got {value}")
    return value


def default_threads(instances: int) -> int:
    """One core for the event loop, the rest split between the instances."""
    return max(1, ((os.cpu_count() or 1) - 1) // max(1, instances))


def thread_budget(config: ModelConfig, instances: int) -> int:
    """Threads per prediction: ``intra_op_thread_count``, else the default split."""
    explicit = int_parameter(config, "intra_op_thread_count")
    return explicit if explicit is not None else default_threads(instances)
