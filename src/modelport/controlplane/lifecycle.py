"""Turning a version directory into a ready ModelVersion, and back.

States a version passes through: LOADING → READY → UNLOADING → (gone), or
LOADING → UNAVAILABLE with the reason. Loading runs off the event loop
(sessions can take seconds to build); unloading first drains the requests
already in flight on that version.
"""

from __future__ import annotations

import logging
from pathlib import Path

from modelport.clock import Clock, SystemClock
from modelport.config.model import InstanceGroup, ModelConfig
from modelport.controlplane.repository.autoconfig import (
    choose_backend,
    complete_config,
    signature_of,
)
from modelport.controlplane.warmup import warm_up
from modelport.dataplane.runtime import RuntimeLoader, runtime_loader
from modelport.dataplane.runtime.files import check_version_dir
from modelport.dataplane.runtime.process import load_in_processes
from modelport.dataplane.scheduled import ScheduledServable
from modelport.dataplane.scheduling.policy import scheduling_policy, with_scheduling_shown
from modelport.dataplane.scheduling.scheduler import Scheduler
from modelport.dataplane.table import ModelVersion
from modelport.errors import ConfigError, ModelLoadError
from modelport.observability.profile import load_profile
from modelport.observability.statistics import ModelStatistics

log = logging.getLogger("modelport.lifecycle")

LOADING = "LOADING"
READY = "READY"
UNLOADING = "UNLOADING"
UNAVAILABLE = "UNAVAILABLE"


def instance_count(config: ModelConfig) -> int:
    """Instances to run at once: the sum of the instance groups (1 by default)."""
    return sum(g.count for g in config.instance_group) or 1


def choose_loader(config: ModelConfig, source: str) -> RuntimeLoader:
    """In-process instances (threads), or worker processes with ``instance_process``.

    Any backend may run in processes, even one that releases the GIL and so
    gains nothing: it is a deployment choice (isolation, a crash-prone
    library), not an error.
    """
    options = config.modelport
    if options.instance_process:
        return load_in_processes
    if options.instance_timeout_s is not None:
        raise ConfigError(
            source,
            "modelport.instance_timeout_s",
            "applies only with modelport.instance_process: true (a thread cannot be stopped)",
        )
    return runtime_loader(config.backend)


def refuse_unsupported(config: ModelConfig, source: str) -> None:
    """Refuse at load what the config asks for and modelport cannot serve yet.

    A model with ``sequence_batching`` expects requests of one sequence to
    reach the same state in order (``sequence_id``, start and end flags);
    served as stateless, it would load READY and then fail, or answer wrongly,
    on every request. Refused here, it is UNAVAILABLE with this reason.
    Likewise an ensemble (``platform: ensemble`` or ``ensemble_scheduling``),
    which has no model file of its own and would route to its steps, and
    ``model_operations.op_library_filename``: custom operation libraries
    modelport never loads, so a model needing them could not work, and a
    config naming one is refused rather than taken as if it did.
    """
    if config.sequence_batching is not None:
        raise ModelLoadError(
            f"sequence_batching is not supported yet ({source}): modelport serves "
            "stateless models only"
        )
    if config.platform == "ensemble" or config.ensemble_scheduling is not None:
        raise ModelLoadError(
            f"ensembles are not supported yet ({source}): modelport serves single models only"
        )
    operations = config.model_operations or {}
    if operations.get("op_library_filename"):
        raise ModelLoadError(
            f"model_operations.op_library_filename is not supported ({source}): modelport "
            "loads no custom operation libraries"
        )


def load_version(
    name: str,
    version: int,
    version_dir: Path,
    config: ModelConfig,
    source: str,
    server_timeout_s: float | None = None,
    files_checked: bool = False,
    clock: Clock | None = None,
) -> ModelVersion:
    """Build a ready version; raises ModelLoadError or ConfigError with the reason.

    Every file the version loads must be inside ``version_dir``
    (``check_version_dir``); ``files_checked`` says the caller checked the
    directory the files came from already (a sealed version, opened into
    memory files whose links lead out of the view by design). ``clock`` is
    the server's, so the version's deadlines, batching delays and timings
    run on the same time as the rest of the request path (and on a test's
    fake clock).
    """
    refuse_unsupported(config, source)
    if not files_checked:
        check_version_dir(version_dir, config)
    # Before anything is allocated: a bad profile makes this version UNAVAILABLE.
    profile = load_profile(version_dir)
    config = choose_backend(config, source, version_dir)
    count = instance_count(config)
    runtime = choose_loader(config, source)(version_dir, config, count)
    try:
        config = complete_config(config, runtime.native, source)
    except Exception:
        runtime.unload()
        raise
    if not config.instance_group:
        group = InstanceGroup(name=name, kind="KIND_CPU", count=1)
        config = config.model_copy(update={"instance_group": [group]})
    config = with_scheduling_shown(config)
    signature = signature_of(config)
    try:
        warmed = warm_up(runtime.predict, config, signature, version_dir.parent)
    except Exception:
        runtime.unload()
        raise
    stats = ModelStatistics()
    clock = clock if clock is not None else SystemClock()
    scheduler = Scheduler(
        runtime,
        scheduling_policy(config, server_timeout_s),
        count,
        f"{name}-v{version}",
        on_execution=stats.record_execution,
        clock=clock,
    )
    log.info(
        "model version ready",
        extra={"model": name, "version": version, "instances": count, "warmup_runs": warmed},
    )
    return ModelVersion(
        name=name,
        version=str(version),
        platform=config.platform,
        signature=signature,
        config=config,
        servable=ScheduledServable(
            scheduler, name, str(version), signature, config.modelport.batch_key, clock
        ),
        stats=stats,
        profile=profile,
    )
