"""Turning a version directory into a ready ModelVersion, and back.

States a version passes through: LOADING → READY → UNLOADING → (gone), or
LOADING → UNAVAILABLE with the reason. Loading runs off the event loop
(sessions can take seconds to build); unloading first drains the requests
already in flight on that version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from modelport.clock import Clock, SystemClock
from modelport.config.model import InstanceGroup, ModelConfig
from modelport.controlplane.repository.autoconfig import (
    choose_backend,
    complete_config,
    signature_of,
)
from modelport.controlplane.warmup import warm_up
from modelport.dataplane.cascade import Answered, CascadeServable, stage_name
from modelport.dataplane.ensemble import EnsembleServable, build_graph, shapes_compatible
from modelport.dataplane.rules import check_datatype
from modelport.dataplane.runtime import RuntimeLoader, runtime_loader
from modelport.dataplane.runtime.files import check_version_dir
from modelport.dataplane.runtime.process import load_in_processes
from modelport.dataplane.runtime.python import PythonRuntime
from modelport.dataplane.scheduled import ScheduledServable
from modelport.dataplane.scheduling.policy import scheduling_policy, with_scheduling_shown
from modelport.dataplane.scheduling.scheduler import Scheduler
from modelport.dataplane.scheduling.sequencer import SequenceScheduler
from modelport.dataplane.scheduling.sequences import (
    SequenceSettings,
    sequence_settings,
    with_idle_controls,
)
from modelport.dataplane.sequenced import SequencedServable
from modelport.dataplane.servable import Servable, StepRunner
from modelport.dataplane.streaming import StreamingServable
from modelport.dataplane.table import ModelVersion
from modelport.errors import (
    ConfigError,
    ModelLoadError,
    ModelportError,
    NotFound,
    ResidencyRefused,
)
from modelport.observability.profile import InputProfile, load_profile
from modelport.observability.statistics import ModelStatistics
from modelport.types import Array, ModelSignature

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

    ``model_operations.op_library_filename`` names custom operation libraries
    modelport never loads, so a model needing them could not work, and a
    config naming one is refused rather than taken as if it did. A sequence
    model is served (``dataplane/sequenced.py``), but not with a second
    scheduler (``dynamic_batching``) nor with a response cache: its answers
    depend on the requests before them. An ensemble loads through
    ``load_ensemble``, never here.
    """
    if is_ensemble(config):
        raise ModelLoadError(f"{source}: an ensemble has no model file to load")
    if config.modelport.steps:
        raise ConfigError(source, "modelport.steps", "only an ensemble has steps")
    operations = config.model_operations or {}
    if operations.get("op_library_filename"):
        raise ModelLoadError(
            f"model_operations.op_library_filename is not supported ({source}): modelport "
            "loads no custom operation libraries"
        )
    if config.sequence_batching is not None:
        if config.dynamic_batching is not None:
            raise ConfigError(
                source,
                "dynamic_batching",
                "a model has one scheduler: dynamic_batching or sequence_batching, not both",
            )
        if config.response_cache is not None and config.response_cache.enable:
            raise ConfigError(
                source,
                "response_cache.enable",
                "a sequence model's answers depend on its sequence: they cannot be cached",
            )


def hide_sequence_tensors(
    config: ModelConfig, settings: SequenceSettings, native: ModelSignature, source: str
) -> ModelConfig:
    """The config less the inputs the server fills and the state outputs it keeps.

    Control and state inputs must be inputs of the model, state outputs its
    outputs; clients never send the former nor receive the latter, so
    metadata does not list them and validation does not ask for them. A
    python model's inputs are what its config lists, and it takes whatever
    it is given: as in Triton, its control inputs need not be listed.
    """
    have_in = {t.name for t in native.inputs}
    have_out = {t.name for t in native.outputs}
    for name in sorted(settings.hidden_inputs):
        if name not in have_in and config.backend != "python":
            raise ConfigError(
                source,
                "sequence_batching",
                f"{name!r} is not an input of the model ({', '.join(sorted(have_in))})",
            )
    for name in sorted(settings.hidden_outputs):
        if name not in have_out:
            raise ConfigError(
                source,
                "sequence_batching.state",
                f"output_name {name!r} is not an output of the model "
                f"({', '.join(sorted(have_out))})",
            )
    hidden_in, hidden_out = settings.hidden_inputs, settings.hidden_outputs
    return config.model_copy(
        update={
            "input": [t for t in config.input if t.name not in hidden_in],
            "output": [t for t in config.output if t.name not in hidden_out],
        }
    )


def is_ensemble(config: ModelConfig) -> bool:
    """Whether the config is an ensemble's (Triton's ``platform: ensemble``)."""
    return config.platform == ENSEMBLE or config.ensemble_scheduling is not None


#: Triton's platform name of an ensemble.
ENSEMBLE = "ensemble"

#: What an ensemble's steps are looked up by: the version ``admit`` gives
#: (NotFound for a model not in the repository, ModelNotReady with the reason
#: for one that cannot serve, ResidencyRefused for one this node may not serve).
StepModels = Callable[[str, str | None], ModelVersion]


def ensemble_steps(config: ModelConfig) -> tuple[str, ...]:
    """The models a composite names: an ensemble's steps, a cascade's stages (empty for
    any other model); the registry loads them first and reloads it when they change."""
    if config.modelport.cascade is not None:
        return tuple(dict.fromkeys(s.model for s in config.modelport.cascade.stages))
    if config.ensemble_scheduling is None:
        return ()
    return tuple(dict.fromkeys(s.model_name for s in config.ensemble_scheduling.step))


def load_order(steps: Mapping[str, Sequence[str]]) -> list[str]:
    """Model names so that every ensemble comes after the models its steps name.

    ``steps`` maps every model to the models its steps name (empty for a
    plain model). Ties keep name order; ensembles that name each other (a
    cycle, refused at their load) come in name order too.
    """
    order: list[str] = []
    placed: set[str] = set()
    visiting: set[str] = set()

    def place(name: str) -> None:
        if name in placed or name in visiting:
            return
        visiting.add(name)
        for dependency in sorted(steps.get(name, ())):
            if dependency in steps:
                place(dependency)
        visiting.discard(name)
        placed.add(name)
        order.append(name)

    for name in sorted(steps):
        place(name)
    return order


def _check_ensemble_config(name: str, config: ModelConfig, source: str) -> None:
    """What an ensemble's own config must say (Triton's rules), each naming its field."""
    if config.platform != ENSEMBLE:
        raise ConfigError(source, "platform", 'ensemble_scheduling needs platform: "ensemble"')
    scheduling = config.ensemble_scheduling
    if scheduling is None or not scheduling.step:
        raise ConfigError(source, "ensemble_scheduling.step", "an ensemble needs at least one step")
    if config.backend:
        raise ConfigError(source, "backend", "an ensemble has no backend: its steps compute")
    for field, present in (
        ("dynamic_batching", config.dynamic_batching is not None),
        ("sequence_batching", config.sequence_batching is not None),
    ):
        if present:
            raise ConfigError(
                source, field, "an ensemble has no scheduler of its own: its steps' models batch"
            )
    if not config.input or not config.output:
        raise ConfigError(
            source,
            "input" if not config.input else "output",
            "an ensemble declares its inputs and outputs (there is no graph to read them from)",
        )
    for i, step in enumerate(scheduling.step):
        field = f"ensemble_scheduling.step[{i}]"
        if step.model_namespace:
            raise ConfigError(
                source, f"{field}.model_namespace", "modelport serves one repository: no namespaces"
            )
        if step.model_name == name:
            raise ConfigError(source, f"{field}.model_name", "an ensemble cannot be its own step")


def load_ensemble(
    name: str,
    version: int,
    config: ModelConfig,
    source: str,
    models: StepModels,
    runner: StepRunner,
    clock: Clock | None = None,
) -> ModelVersion:
    """An ensemble version, its graph checked against its steps' loaded models.

    Runs on the event loop once the models it names have loaded (the registry
    orders loads so). A step naming a model outside the repository, or one
    of its tensors the model does not have, is a ConfigError naming
    ``source`` and the field; a model that cannot serve makes the ensemble
    fail its load with that model's reason. A model this node may not serve
    (its residency) does not: requests needing its step are refused with 451.
    A sequence model may be a step: it gets the request's sequence parameters.
    """
    _check_ensemble_config(name, config, source)
    scheduling = config.ensemble_scheduling
    assert scheduling is not None
    if config.modelport.cascade is not None:
        raise ConfigError(source, "modelport.cascade", "an ensemble cannot be a cascade too")
    signatures: list[ModelSignature | None] = []
    refused: dict[int, str] = {}
    sequenced: set[int] = set()
    for i, step in enumerate(scheduling.step):
        field = f"ensemble_scheduling.step[{i}]"
        wanted = None if step.model_version == -1 else str(step.model_version)
        try:
            model = models(step.model_name, wanted)
        except ResidencyRefused as exc:
            refused[i] = exc.message
            signatures.append(None)
            continue
        except NotFound as exc:
            raise ConfigError(source, f"{field}.model_name", exc.message) from None
        except ModelportError as exc:
            raise ModelLoadError(
                f"{source}: {field}.model_name: model {step.model_name!r} cannot serve: "
                f"{exc.message}"
            ) from None
        if model.config.sequence_batching is not None:
            if config.response_cache is not None and config.response_cache.enable:
                raise ConfigError(
                    source,
                    "response_cache.enable",
                    f"{field} is sequence model {step.model_name!r}: the ensemble's answers "
                    "depend on the sequence, so they cannot be cached",
                )
            sequenced.add(i)
        signatures.append(model.signature)
    signature = signature_of(config)
    graph = build_graph(scheduling, signature, signatures, source, config.modelport.steps)
    stats = ModelStatistics()
    servable = EnsembleServable(
        name,
        str(version),
        graph,
        signature,
        runner,
        clock,
        refused,
        sequenced=sequenced,
        on_execution=stats.record_execution,
    )
    log.info(
        "model version ready",
        extra={"model": name, "version": version, "steps": len(graph.steps)},
    )
    return ModelVersion(
        name=name,
        version=str(version),
        platform=ENSEMBLE,
        signature=signature,
        config=config,
        servable=servable,
        stats=stats,
    )


#: The platform a cascade reports (it has no model file, like an ensemble).
CASCADE = "cascade"


def is_cascade(config: ModelConfig) -> bool:
    """Whether the config makes the model a cascade (``modelport.cascade``)."""
    return config.modelport.cascade is not None


def load_cascade(
    name: str,
    version: int,
    config: ModelConfig,
    source: str,
    models: StepModels,
    runner: StepRunner,
    clock: Clock | None = None,
    answered: Answered | None = None,
) -> ModelVersion:
    """A cascade version, each stage checked against its loaded model.

    Every stage model takes the cascade's inputs and gives its outputs, with
    the same datatypes and compatible shapes; every stage but the last has
    an ``accept`` rule on one of its model's outputs. Each problem is a
    ConfigError naming ``source`` and the field; a stage model that cannot
    serve fails the load with that model's reason, as for ensembles.
    """
    cascade = config.modelport.cascade
    assert cascade is not None
    for field, present in (
        ("backend", bool(config.backend)),
        ("platform", config.platform not in ("", CASCADE)),
        ("dynamic_batching", config.dynamic_batching is not None),
        ("sequence_batching", config.sequence_batching is not None),
        ("modelport.steps", bool(config.modelport.steps)),
    ):
        if present:
            raise ConfigError(source, field, "a cascade has none: its stages compute")
    if not config.input or not config.output:
        raise ConfigError(
            source, "input" if not config.input else "output", "a cascade declares its tensors"
        )
    if cascade.per_row and config.max_batch_size == 0:
        raise ConfigError(
            source, "modelport.cascade.per_row", "per_row splits batches: set max_batch_size"
        )
    signature = signature_of(config)
    last = len(cascade.stages) - 1
    seen: set[str] = set()
    for i, stage in enumerate(cascade.stages):
        field = f"modelport.cascade.stages[{i}]"
        if stage_name(stage) in seen:
            raise ConfigError(source, f"{field}.name", f"{stage_name(stage)!r} names two stages")
        seen.add(stage_name(stage))
        if stage.model == name:
            raise ConfigError(source, f"{field}.model", "a cascade cannot be its own stage")
        wanted = None if stage.version == -1 else str(stage.version)
        try:
            model = models(stage.model, wanted)
        except NotFound as exc:
            raise ConfigError(source, f"{field}.model", exc.message) from None
        except ModelportError as exc:
            raise ModelLoadError(
                f"{source}: {field}.model: model {stage.model!r} cannot serve: {exc.message}"
            ) from None
        if model.config.sequence_batching is not None:
            raise ConfigError(source, f"{field}.model", f"{stage.model!r} is a sequence model")
        _check_stage(signature, model.signature, stage.model, source, f"{field}.model")
        if i == last:
            for key, bad in (("accept", stage.accept is not None), ("optional", stage.optional)):
                if bad:
                    raise ConfigError(
                        source, f"{field}.{key}", "the last stage always answers: not allowed"
                    )
        elif stage.accept is None:
            raise ConfigError(source, f"{field}.accept", "every stage but the last needs one")
        elif stage.accept.output is not None:
            spec = next((t for t in model.signature.outputs if t.name == stage.accept.output), None)
            if spec is None:
                raise ConfigError(
                    source,
                    f"{field}.accept.output",
                    f"{stage.accept.output!r} is not an output of model {stage.model!r}",
                )
            check_datatype(stage.accept, spec.datatype, source, f"{field}.accept")
    servable = CascadeServable(
        name,
        str(version),
        cascade.stages,
        signature,
        runner,
        cascade.per_row,
        clock,
        answered,
    )
    log.info("model version ready", extra={"model": name, "version": version})
    return ModelVersion(
        name=name,
        version=str(version),
        platform=CASCADE,
        signature=signature,
        config=config,
        servable=servable,
        stats=ModelStatistics(),
    )


def _check_stage(
    cascade: ModelSignature, model: ModelSignature, stage: str, source: str, field: str
) -> None:
    """The stage's model takes exactly the cascade's inputs and gives its outputs."""
    takes = {t.name: t for t in model.inputs}
    gives = {t.name: t for t in model.outputs}
    ours = {t.name for t in cascade.inputs}
    extra = sorted(set(takes) - ours)
    if extra:
        raise ConfigError(
            source, field, f"model {stage!r} input {extra[0]!r} is not an input of the cascade"
        )
    for kind, specs, theirs in (
        ("input", cascade.inputs, takes),
        ("output", cascade.outputs, gives),
    ):
        for spec in specs:
            other = theirs.get(spec.name)
            if other is None:
                raise ConfigError(source, field, f"model {stage!r} has no {kind} {spec.name!r}")
            if other.datatype != spec.datatype or not shapes_compatible(other.shape, spec.shape):
                raise ConfigError(
                    source,
                    field,
                    f"model {stage!r} {kind} {spec.name!r} is {other.datatype} "
                    f"{list(other.shape)}, the cascade's is {spec.datatype} {list(spec.shape)}",
                )


class ProcessHost(Protocol):
    """Which worker of a node hosts a model whose instances are processes.

    Such a model is hosted once per node, not once per front-end worker: the
    other workers serve it through the host (``node/forward.py``).
    """

    def mine(self, name: str) -> bool:
        """Whether this worker hosts ``name``."""
        ...

    def outline(self, name: str, version: int) -> ModelConfig:
        """The host's completed config of the version, once it is loaded there
        (blocking; ModelLoadError when the host does not load it in time)."""
        ...

    def servable(self, name: str, version: int) -> Servable:
        """The servable that runs requests on the host."""
        ...


def refuse_unstreamable(config: ModelConfig, source: str) -> None:
    """Refuse a decoupled model modelport cannot stream (docs/streaming.md).

    Only a python model yields its responses; a stream holds an instance
    thread in this process, so not in worker processes; it has no sequence
    scheduler; and one response cached for a request would stand for a stream.
    """
    field = "model_transaction_policy.decoupled"
    if config.backend != "python":
        raise ConfigError(
            source, field, f"only 'backend: python' models stream; this one is {config.backend!r}"
        )
    if config.modelport.instance_process:
        raise ConfigError(source, field, "a decoupled model runs in-process, not instance_process")
    if config.sequence_batching is not None:
        raise ConfigError(source, field, "a decoupled model cannot use sequence_batching")
    if config.response_cache is not None and config.response_cache.enable:
        raise ConfigError(source, field, "a decoupled model's responses cannot be cached")


def streaming_version(
    name: str,
    version: int,
    config: ModelConfig,
    runtime: object,
    clock: Clock | None,
    profile: InputProfile | None,
    source: str,
) -> ModelVersion:
    """A decoupled python version: no warm-up (a stream may have effects), no scheduler
    (nor a dynamic_batching section shown: streams are never batched together)."""
    if not isinstance(runtime, PythonRuntime) or not runtime.decoupled:
        raise ModelLoadError(f"{source}: a decoupled model needs a python model that yields")
    signature = signature_of(config)
    servable = StreamingServable(runtime, name, str(version), signature, clock)
    log.info(
        "model version ready",
        extra={"model": name, "version": version, "instances": runtime.instances, "stream": True},
    )
    return ModelVersion(
        name=name,
        version=str(version),
        platform=config.platform,
        signature=signature,
        config=config,
        servable=servable,
        stats=ModelStatistics(),
        profile=profile,
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
    host: ProcessHost | None = None,
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
    if config.decoupled:
        refuse_unstreamable(config, source)
    if host is not None and config.modelport.instance_process and not host.mine(name):
        return hosted_elsewhere(name, version, host, profile)
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
    if config.decoupled:
        try:
            return streaming_version(name, version, config, runtime, clock, profile, source)
        except Exception:
            runtime.unload()
            raise
    sequences: SequenceSettings | None = None
    predict: Callable[[Mapping[str, Array], Sequence[str]], dict[str, Array]]
    predict = runtime.predict
    try:
        if config.sequence_batching is not None:
            sequences = sequence_settings(config, count, source, version_dir.parent)
            config = hide_sequence_tensors(config, sequences, runtime.native, source)
            predict = with_idle_controls(runtime.predict, sequences)
        config = with_scheduling_shown(config)
        signature = signature_of(config)
        warmed = warm_up(predict, config, signature, version_dir.parent)
    except Exception:
        runtime.unload()
        raise
    stats = ModelStatistics()
    clock = clock if clock is not None else SystemClock()
    label = f"{name}-v{version}"
    servable: ScheduledServable | SequencedServable
    if sequences is not None:
        servable = SequencedServable(
            SequenceScheduler(
                runtime,
                sequences,
                label,
                on_execution=stats.record_execution,
                clock=clock,
            ),
            name,
            str(version),
            signature,
            clock,
        )
    else:
        scheduler = Scheduler(
            runtime,
            scheduling_policy(config, server_timeout_s),
            count,
            label,
            on_execution=stats.record_execution,
            clock=clock,
        )
        servable = ScheduledServable(
            scheduler, name, str(version), signature, config.modelport.batch_key, clock
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
        servable=servable,
        stats=stats,
        profile=profile,
    )


def hosted_elsewhere(
    name: str, version: int, host: ProcessHost, profile: InputProfile | None
) -> ModelVersion:
    """A version another worker of the node hosts: its config as the host completed
    it, and a servable that runs each request there."""
    config = host.outline(name, version)
    log.info(
        "model version ready", extra={"model": name, "version": version, "hosted": "elsewhere"}
    )
    return ModelVersion(
        name=name,
        version=str(version),
        platform=config.platform,
        signature=signature_of(config),
        config=config,
        servable=host.servable(name, version),
        stats=ModelStatistics(),
        profile=profile,
    )
