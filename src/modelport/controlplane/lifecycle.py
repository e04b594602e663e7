"""Turning a version directory into a ready ModelVersion, and back.

States a version passes through: LOADING → READY → UNLOADING → (gone), or
LOADING → UNAVAILABLE with the reason. Loading runs off the event loop
(sessions can take seconds to build); unloading first drains the requests
already in flight on that version.
"""

from __future__ import annotations

import logging
from pathlib import Path

from modelport.config.model import InstanceGroup, ModelConfig
from modelport.controlplane.repository.autoconfig import (
    choose_backend,
    complete_config,
    signature_of,
)
from modelport.dataplane.runtime import runtime_loader
from modelport.dataplane.scheduling.instances import InstancePool
from modelport.dataplane.table import ModelVersion

log = logging.getLogger("modelport.lifecycle")

LOADING = "LOADING"
READY = "READY"
UNLOADING = "UNLOADING"
UNAVAILABLE = "UNAVAILABLE"


def instance_count(config: ModelConfig) -> int:
    """Instances to run at once: the sum of the instance groups (1 by default)."""
    return sum(g.count for g in config.instance_group) or 1


def load_version(
    name: str, version: int, version_dir: Path, config: ModelConfig, source: str
) -> ModelVersion:
    """Build a ready version; raises ModelLoadError or ConfigError with the reason."""
    config = choose_backend(config, source)
    count = instance_count(config)
    loader = runtime_loader(config.backend)
    runtime = loader(version_dir, config, count)
    try:
        config = complete_config(config, runtime.native, source)
    except Exception:
        runtime.unload()
        raise
    if not config.instance_group:
        group = InstanceGroup(name=name, kind="KIND_CPU", count=1)
        config = config.model_copy(update={"instance_group": [group]})
    pool = InstancePool(runtime, count, f"{name}-v{version}")
    log.info("model version ready", extra={"model": name, "version": version, "instances": count})
    return ModelVersion(
        name=name,
        version=str(version),
        platform=config.platform,
        signature=signature_of(config),
        config=config,
        instances=pool,
    )
