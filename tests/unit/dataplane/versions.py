"""A model version as the control plane builds one: a runtime behind a real Scheduler."""

from __future__ import annotations

from modelport.config.model import ModelConfig
from modelport.dataplane.runtime.base import Runtime
from modelport.dataplane.scheduled import ScheduledServable
from modelport.dataplane.scheduling.policy import scheduling_policy
from modelport.dataplane.scheduling.scheduler import Scheduler
from modelport.dataplane.table import ModelVersion
from modelport.observability.profile import InputProfile
from modelport.observability.statistics import ModelStatistics
from modelport.types import ModelSignature


def scheduled_version(
    runtime: Runtime,
    signature: ModelSignature,
    config: ModelConfig,
    name: str = "m",
    *,
    profile: InputProfile | None = None,
    count_executions: bool = False,
) -> ModelVersion:
    """Version 1 of ``name``, one instance; ``count_executions`` feeds the statistics'
    execution counts from the scheduler, as the server does."""
    stats = ModelStatistics()
    scheduler = Scheduler(
        runtime,
        scheduling_policy(config, None),
        1,
        name,
        on_execution=stats.record_execution if count_executions else None,
    )
    servable = ScheduledServable(scheduler, name, "1", signature)
    return ModelVersion(name, "1", "fake", signature, config, servable, stats, profile)
