"""Triton ensembles: a graph of steps over named tensors, served as one model.

An ensemble (``platform: ensemble``) computes nothing itself. Its
``ensemble_scheduling.step`` list names models and wires their inputs and
outputs to the ensemble's tensors; a step runs as soon as every tensor it
takes exists, so independent branches run at the same time. Each step is a
request for its model through the pipeline's ``StepRunner`` (routed,
validated, cached, executed on that model's scheduler and batching, and
counted in that model's statistics under the "step" label), with the
ensemble's Call: its caller, deadline and request id.

The graph is built and checked once, at load, by pure functions
(``build_graph``, ``needed_steps``): every tensor produced once and used,
every step's tensors known to its model with the datatype and a compatible
shape on both ends of each edge, no cycle. A request runs only the steps its
outputs need.

Example: ``pre`` gives ``a`` and ``b``; ``left(a)`` and ``right(b)`` do not
depend on each other, so both start when ``pre`` ends; ``combine(l, r)``
starts when the slower of the two ends. A request for ``l`` alone runs
``pre`` and ``left``.

Beyond Triton, the ensemble's ``modelport.steps`` gives a step a condition
(``when``: a rule on an earlier tensor or a request parameter, ``rules.py``)
and per-step control (``steps.py``). A step whose condition does not hold is
skipped, its model never called, and so is every step that needs a tensor a
skipped (or failed optional) step would have given; the request answers with
the outputs it has and names the skipped steps in the ``ensemble_skipped``
response parameter.

A step whose model is a sequence model (``sequence_batching``) is called with
the ensemble request's ``sequence_id``, ``sequence_start`` and
``sequence_end``, as Triton passes an ensemble request's correlation id and
flags to its composing models: the step rides that model's sequence (its
slot and state) like a direct request would. Other steps get no parameters,
since a stateless model refuses a ``sequence_id``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from modelport.clock import Clock, SystemClock
from modelport.config.model import EnsembleScheduling, EnsembleStep, Rule, StepControl, StepOptions
from modelport.dataplane.codec.parameters import SEQUENCE_END, SEQUENCE_ID, SEQUENCE_START
from modelport.dataplane.rules import check_datatype, holds
from modelport.dataplane.servable import Outcome, StepRunner, respond, wanted_outputs
from modelport.dataplane.steps import ControlledStep, Sleep, controls
from modelport.errors import (
    ConfigError,
    InferenceFailed,
    InvalidRequest,
    ModelportError,
    ResidencyRefused,
    Unavailable,
)
from modelport.observability.statistics import SummingSteps
from modelport.types import Array, Call, InferenceRequest, ModelSignature, TensorSpec

#: The field every step error names, with the step's index.
_STEP = "ensemble_scheduling.step"

#: The field of modelport's per-step options.
_OPTIONS = "modelport.steps"

#: A step's control when its ensemble sets none.
_NO_CONTROL = StepControl()

#: Response parameters: the steps a request skipped, and its optional steps that failed.
SKIPPED_PARAMETER = "ensemble_skipped"
FAILED_PARAMETER = "ensemble_failed"


@dataclass(frozen=True, slots=True)
class Step:
    """One step: its model and version, and its tensors as (model's name, ensemble's name)."""

    index: int
    model: str
    version: str | None
    """None for Triton's -1: the version the model's routing picks."""
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]
    name: str = ""
    """How ``modelport.steps`` and responses name it: the model's name, or the index
    when the model is a step twice."""
    when: Rule | None = None
    control: StepControl = _NO_CONTROL
    sequenced: bool = False
    """Its model is a sequence model: it is called with the request's sequence."""

    @property
    def label(self) -> str:
        return f"step {self.index} ({self.model!r})"

    @property
    def gives(self) -> tuple[str, ...]:
        """The ensemble tensors it gives."""
        return tuple(t for _, t in self.outputs)

    @property
    def waits(self) -> tuple[str, ...]:
        """The tensors that must exist before it starts: its inputs and its condition's."""
        taken = tuple(t for _, t in self.inputs)
        if self.when is not None and self.when.output is not None:
            return (*taken, self.when.output)
        return taken


@dataclass(frozen=True, slots=True)
class EnsembleGraph:
    """A checked ensemble: steps in a readiness order and who produces each tensor."""

    steps: tuple[Step, ...]
    """By index, as written."""
    order: tuple[int, ...]
    """Step indices so that each comes after every step it takes a tensor from."""
    inputs: frozenset[str]
    producer: Mapping[str, int]
    """Ensemble tensor → the step that gives it (ensemble inputs are not in it)."""


def shapes_compatible(a: Sequence[int], b: Sequence[int]) -> bool:
    """Same rank, and each dimension equal or -1 (any size) on either side."""
    return len(a) == len(b) and all(x in (y, -1) or y == -1 for x, y in zip(a, b, strict=True))


def build_graph(
    scheduling: EnsembleScheduling,
    signature: ModelSignature,
    steps: Sequence[ModelSignature | None],
    source: str,
    options: Mapping[str, StepOptions] | None = None,
) -> EnsembleGraph:
    """The ensemble's graph, checked; ConfigError naming ``source`` and the field.

    ``signature`` is the ensemble's own (its ``input`` and ``output``);
    ``steps[i]`` the signature of step i's model, or None where it is not
    known here (a model this node may not serve): that step's tensors are
    then taken as written. ``options``: the ensemble's ``modelport.steps``.
    """
    check_options(scheduling, options or {}, source)
    built = _with_options(tuple(_step(i, s) for i, s in enumerate(scheduling.step)), options)
    if not built:
        raise ConfigError(source, _STEP, "an ensemble needs at least one step")
    ours_in = {t.name: t for t in signature.inputs}
    ours_out = {t.name: t for t in signature.outputs}
    producer: dict[str, int] = {}
    for step, model in zip(built, steps, strict=True):
        _check_step_tensors(step, model, source)
        for _, tensor in step.outputs:
            field = f"{_STEP}[{step.index}].output_map"
            if tensor in ours_in:
                raise ConfigError(
                    source, field, f"{tensor!r} is an ensemble input: no step gives it"
                )
            if tensor in producer:
                other = built[producer[tensor]]
                raise ConfigError(source, field, f"{tensor!r} is given by {other.label} already")
            producer[tensor] = step.index
    used: set[str] = set()
    for step in built:
        for _, tensor in step.inputs:
            if tensor not in ours_in and tensor not in producer:
                raise ConfigError(
                    source,
                    f"{_STEP}[{step.index}].input_map",
                    f"{tensor!r} is neither an ensemble input nor given by any step",
                )
            used.add(tensor)
    for k, spec in enumerate(signature.outputs):
        if spec.name not in producer and spec.name not in ours_in:
            raise ConfigError(source, f"output[{k}]", f"{spec.name!r} is given by no step")
        used.add(spec.name)
    for k, spec in enumerate(signature.inputs):
        if spec.name not in used:
            raise ConfigError(source, f"input[{k}]", f"{spec.name!r} is used by no step")
    _check_conditions(built, ours_in, producer, source)
    order = _order(built, producer, source)
    graph = EnsembleGraph(built, order, frozenset(ours_in), producer)
    _check_edges(graph, signature, steps, ours_out, source)
    return graph


def _with_options(
    steps: tuple[Step, ...], options: Mapping[str, StepOptions] | None
) -> tuple[Step, ...]:
    """The steps named, with their ``modelport.steps`` options (keys checked first)."""
    counts = Counter(s.model for s in steps)
    named = [replace(s, name=s.model if counts[s.model] == 1 else str(s.index)) for s in steps]
    for key, option in (options or {}).items():
        index = _option_target(key, named)
        if index is not None:
            named[index] = replace(named[index], when=option.when, control=option)
    return tuple(named)


def _option_target(key: str, steps: Sequence[Step]) -> int | None:
    """The index of the step ``key`` names (its name, or its index), or None."""
    for step in steps:
        if key in (step.name, str(step.index)):
            return step.index
    return None


def check_options(
    scheduling: EnsembleScheduling, options: Mapping[str, StepOptions], source: str
) -> None:
    """Every ``modelport.steps`` key names one step: its model, or its index when the
    model is a step twice."""
    models = [s.model_name for s in scheduling.step]
    counts = Counter(models)
    for key in options:
        field = f"{_OPTIONS}.{key}"
        if key.isdigit() and int(key) < len(models):
            continue
        if counts.get(key, 0) > 1:
            raise ConfigError(
                source,
                field,
                f"model {key!r} is a step {counts[key]} times: name the step by its index "
                "in ensemble_scheduling.step",
            )
        if counts.get(key, 0) == 0:
            raise ConfigError(
                source, field, f"names no step (steps: {', '.join(dict.fromkeys(models))})"
            )


def _check_conditions(
    steps: tuple[Step, ...],
    ours_in: Mapping[str, TensorSpec],
    producer: Mapping[str, int],
    source: str,
) -> None:
    """A condition's tensor exists, and comes from another step (or is an input)."""
    for step in steps:
        if step.when is None or step.when.output is None:
            continue
        tensor = step.when.output
        field = f"{_OPTIONS}.{step.name}.when.output"
        if tensor not in ours_in and tensor not in producer:
            raise ConfigError(
                source, field, f"{tensor!r} is neither an ensemble input nor given by any step"
            )
        if producer.get(tensor) == step.index:
            raise ConfigError(source, field, f"{tensor!r} is given by the step itself")


def needed_steps(graph: EnsembleGraph, wanted: Iterable[str]) -> tuple[int, ...]:
    """The steps whose outputs feed ``wanted``, in readiness order; the others are pruned."""
    needed: set[int] = set()
    todo = [graph.producer[t] for t in wanted if t in graph.producer]
    while todo:
        index = todo.pop()
        if index in needed:
            continue
        needed.add(index)
        todo += [graph.producer[t] for t in graph.steps[index].waits if t in graph.producer]
    return tuple(i for i in graph.order if i in needed)


def _step(index: int, written: EnsembleStep) -> Step:
    version = None if written.model_version == -1 else str(written.model_version)
    return Step(
        index,
        written.model_name,
        version,
        tuple(written.input_map.items()),
        tuple(written.output_map.items()),
    )


def _check_step_tensors(step: Step, model: ModelSignature | None, source: str) -> None:
    """Every mapped name is a tensor of the step's model; every input it needs is mapped."""
    if model is None:
        return
    takes = {t.name for t in model.inputs}
    gives = {t.name for t in model.outputs}
    field = f"{_STEP}[{step.index}]"
    for name, _ in step.inputs:
        if name not in takes:
            raise ConfigError(
                source,
                f"{field}.input_map",
                f"{name!r} is not an input of model {step.model!r} ({', '.join(sorted(takes))})",
            )
    for name, _ in step.outputs:
        if name not in gives:
            raise ConfigError(
                source,
                f"{field}.output_map",
                f"{name!r} is not an output of model {step.model!r} ({', '.join(sorted(gives))})",
            )
    mapped = {name for name, _ in step.inputs}
    missing = sorted(takes - mapped)
    if missing:
        raise ConfigError(
            source,
            f"{field}.input_map",
            f"model {step.model!r} input {missing[0]!r} is not mapped to any ensemble tensor",
        )
    if not step.outputs:
        raise ConfigError(source, f"{field}.output_map", "a step must give at least one tensor")


def _order(steps: tuple[Step, ...], producer: Mapping[str, int], source: str) -> tuple[int, ...]:
    """A readiness order (Kahn's algorithm, ties by index); a cycle is a ConfigError."""
    after: dict[int, set[int]] = {s.index: set() for s in steps}
    for step in steps:
        for tensor in step.waits:
            if tensor in producer:
                after[step.index].add(producer[tensor])
    order: list[int] = []
    done: set[int] = set()
    while len(order) < len(steps):
        ready = [i for i, deps in sorted(after.items()) if i not in done and deps <= done]
        if not ready:
            raise ConfigError(source, _STEP, f"the steps form a cycle: {_cycle(steps, after)}")
        order += ready
        done.update(ready)
    return tuple(order)


def _cycle(steps: tuple[Step, ...], after: Mapping[int, set[int]]) -> str:
    """One cycle among the steps, written as ``step 0 ('a') → step 1 ('b') → step 0 ('a')``."""
    # Walk back along "takes from" edges from a step that cannot run; within
    # a finite graph the walk repeats a step, and the repeat closes the cycle.
    blocked = {i for i in after if _blocked(i, after)}
    path: list[int] = []
    current = min(blocked)
    while current not in path:
        path.append(current)
        current = min(d for d in after[current] if d in blocked)
    loop = [*path[path.index(current) :], current]
    return " → ".join(steps[i].label for i in reversed(loop))


def _blocked(index: int, after: Mapping[int, set[int]]) -> bool:
    """Whether ``index`` depends, transitively, on itself."""
    seen: set[int] = set()
    todo = list(after[index])
    while todo:
        i = todo.pop()
        if i == index:
            return True
        if i not in seen:
            seen.add(i)
            todo += after[i]
    return False


def _check_edges(
    graph: EnsembleGraph,
    signature: ModelSignature,
    steps: Sequence[ModelSignature | None],
    ours_out: Mapping[str, TensorSpec],
    source: str,
) -> None:
    """Datatype and shape agree at both ends of every tensor edge."""
    ours_in = {t.name: t for t in signature.inputs}

    def given(tensor: str) -> tuple[TensorSpec | None, str]:
        if tensor in ours_in:
            return ours_in[tensor], f"ensemble input {tensor!r}"
        step = graph.steps[graph.producer[tensor]]
        model = steps[step.index]
        name = next(n for n, t in step.outputs if t == tensor)
        spec = _spec(model.outputs, name) if model is not None else None
        return spec, f"{step.label} output {name!r}"

    for step in graph.steps:
        model = steps[step.index]
        if model is None:
            continue
        for name, tensor in step.inputs:
            spec, origin = given(tensor)
            taken = _spec(model.inputs, name)
            if spec is not None and taken is not None:
                where = f"{_STEP}[{step.index}].input_map"
                _agree(spec, origin, taken, f"model {step.model!r} input {name!r}", source, where)
    for k, (name, out) in enumerate(ours_out.items()):
        spec, origin = given(name)
        if spec is not None:
            _agree(spec, origin, out, f"ensemble output {name!r}", source, f"output[{k}]")
    for step in graph.steps:
        if step.when is not None and step.when.output is not None:
            spec, _ = given(step.when.output)
            if spec is not None:
                field = f"{_OPTIONS}.{step.name}.when"
                check_datatype(step.when, spec.datatype, source, field)


def _spec(specs: Sequence[TensorSpec], name: str) -> TensorSpec | None:
    return next((s for s in specs if s.name == name), None)


def _agree(
    given: TensorSpec, origin: str, taken: TensorSpec, taker: str, source: str, field: str
) -> None:
    if given.datatype != taken.datatype:
        raise ConfigError(
            source,
            field,
            f"{origin} is {given.datatype} but {taker} takes {taken.datatype}",
        )
    if not shapes_compatible(given.shape, taken.shape):
        raise ConfigError(
            source,
            field,
            f"{origin} has shape {list(given.shape)} but {taker} takes {list(taken.shape)}",
        )


@dataclass(slots=True)
class GraphRun:
    """What running a plan gave: the tensors, and the steps that did not give theirs."""

    tensors: dict[str, Array]
    skipped: list[str] = field(default_factory=list)
    """Steps not run: their condition did not hold, or a tensor they wait for will
    never exist. In readiness order."""
    failed: list[str] = field(default_factory=list)
    """Optional steps that failed; their outputs are left out."""


async def run_graph(
    graph: EnsembleGraph,
    plan: Sequence[int],
    runner: StepRunner,
    call: Call | None,
    tensors: dict[str, Array],
    parameters: Mapping[str, Any] | None = None,
    controlled: Mapping[int, ControlledStep] | None = None,
    rows: int = 1,
    batched: bool = False,
    sequence: Mapping[str, Any] | None = None,
) -> GraphRun:
    """Run the steps of ``plan``, each as soon as its tensors exist; ``tensors`` grows.

    Steps that run side by side are tasks owned by this call: the first
    failure of a step that is not optional cancels the rest and is raised,
    and a cancelled caller cancels them all. A step whose condition does not hold (on ``tensors``
    or the request's ``parameters``) is skipped; so is a step waiting for a
    tensor a skipped or failed optional step would have given.

    ``controlled`` holds the steps that have a control to apply (``steps.py``);
    any other step is the runner's call alone. A step that is the only one
    able to run (the next link of a chain) is awaited here rather than made a
    task: nothing could run beside it, so a task would only cost its creation
    and a wait. ``sequence`` holds the request's sequence parameters, given to
    the ``sequenced`` steps only.
    """
    params: Mapping[str, Any] = parameters if parameters is not None else {}
    steps: Mapping[int, ControlledStep] = controlled if controlled is not None else {}
    waiting = {i: {t for t in graph.steps[i].waits if t not in tensors} for i in plan}
    absent: set[str] = set()
    run = GraphRun(tensors)
    running: dict[asyncio.Future[dict[str, Array]], Step] = {}
    ready: list[Step] = []

    def drop(step: Step, into: list[str]) -> None:
        into.append(step.name)
        absent.update(t for _, t in step.outputs)

    def find_ready() -> None:
        # Each skip may make further steps impossible: go round until none changes.
        changed = True
        while changed:
            changed = False
            for index in list(waiting):
                missing = waiting[index]
                step = graph.steps[index]
                if missing & absent:
                    del waiting[index]
                    drop(step, run.skipped)
                    changed = True
                elif not missing:
                    del waiting[index]
                    if step.when is not None and not holds(
                        step.when, tensors, params, rows, batched
                    ):
                        drop(step, run.skipped)
                        changed = True
                        continue
                    ready.append(step)

    def work(step: Step) -> Awaitable[dict[str, Array]]:
        inputs = {name: tensors[t] for name, t in step.inputs}
        control = steps.get(step.index)
        given = sequence if step.sequenced else None
        if control is not None:
            return control.run(runner, call, inputs, given)
        return runner.run_step(call, step.model, step.version, inputs, given)

    def gave(step: Step, outputs: Mapping[str, Array]) -> None:
        for name, tensor in step.outputs:
            if name not in outputs:
                raise InferenceFailed(f"{step.label} gave no output {name!r}")
            tensors[tensor] = outputs[name]
            for missing in waiting.values():
                missing.discard(tensor)

    try:
        find_ready()
        while ready or running:
            if len(ready) == 1 and not running:
                step = ready.pop()
                try:
                    outputs = await work(step)
                except ModelportError:
                    if not step.control.optional:
                        raise
                    drop(step, run.failed)
                else:
                    gave(step, outputs)
                find_ready()
                continue
            for step in ready:
                running[asyncio.ensure_future(work(step))] = step
            ready.clear()
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                step = running.pop(task)
                failure = task.exception()
                if failure is not None:
                    if step.control.optional and isinstance(failure, ModelportError):
                        drop(step, run.failed)
                        continue
                    raise failure
                gave(step, task.result())
            find_ready()
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    return run


def chain_of(graph: EnsembleGraph, plan: Sequence[int]) -> tuple[Step, ...] | None:
    """The plan's steps when they can only ever run one after another, else None.

    That holds when each step takes a tensor from the step just before it (so
    it cannot start earlier) and no step has a condition or is optional (no
    step is ever left out). Such a plan runs as a plain loop (``run_chain``):
    no readiness bookkeeping, no task per step.
    """
    steps = tuple(graph.steps[i] for i in plan)
    for k, step in enumerate(steps):
        if step.when is not None or step.control.optional:
            return None
        if k and not any(t in steps[k - 1].gives for t in step.waits):
            return None
    return steps


async def run_chain(
    steps: Sequence[Step],
    runner: StepRunner,
    call: Call | None,
    tensors: dict[str, Array],
    controlled: Mapping[int, ControlledStep],
    sequence: Mapping[str, Any] | None = None,
) -> GraphRun:
    """Run steps that ``chain_of`` found sequential, in order; ``tensors`` grows.

    What ``run_graph`` does for the same plan, minus its bookkeeping: a failure
    is raised as it comes, and a cancelled caller cancels the step running.
    """
    for step in steps:
        inputs = {name: tensors[t] for name, t in step.inputs}
        control = controlled.get(step.index)
        given = sequence if step.sequenced else None
        if control is None:
            outputs = await runner.run_step(call, step.model, step.version, inputs, given)
        else:
            outputs = await control.run(runner, call, inputs, given)
        for name, tensor in step.outputs:
            if name not in outputs:
                raise InferenceFailed(f"{step.label} gave no output {name!r}")
            tensors[tensor] = outputs[name]
    return GraphRun(tensors)


@dataclass(frozen=True, slots=True)
class Plan:
    """What a request asking for some outputs runs, worked out once per output set."""

    steps: tuple[int, ...]
    """The steps needed, in readiness order."""
    chain: tuple[Step, ...] | None
    """The same steps when they run one after another (``chain_of``)."""
    refused: str | None
    """Why a needed step may not run on this node, naming it; None when all may."""
    sequenced: str | None = None
    """The label of the first needed step whose model is a sequence model, if any:
    such a request must name its sequence."""


class LateStepRunner:
    """The StepRunner ensembles are built with before the pipeline exists.

    The registry loads versions before the composition root builds the
    pipeline over it; ensembles get this holder at load, and the root binds
    the pipeline to it once built. No request can reach an ensemble before.
    """

    __slots__ = ("_runner",)

    def __init__(self) -> None:
        self._runner: StepRunner | None = None

    def bind(self, runner: StepRunner) -> None:
        self._runner = runner

    def run_step(
        self,
        call: Call | None,
        model: str,
        version: str | None,
        inputs: Mapping[str, Array],
        parameters: Mapping[str, Any] | None = None,
    ) -> Coroutine[Any, Any, dict[str, Array]]:
        """The bound runner's own coroutine, so that the holder adds no frame per step."""
        runner = self._runner
        if runner is None:
            return _not_started()
        return runner.run_step(call, model, version, inputs, parameters)


async def _not_started() -> dict[str, Array]:
    raise Unavailable("the server is starting: ensemble steps cannot run yet")


class EnsembleServable:
    """The Servable of an ensemble version: its graph run through the ``StepRunner``.

    ``refused`` holds, per step index, why that step's model may not run on
    this node (its residency): a request needing such a step is refused whole
    with ResidencyRefused before any step runs.

    The Outcome's timings are its steps', summed as Triton sums them: queue
    is the time its steps waited in their models' queues, compute (input,
    infer, output) the time they computed, each as the step model's own
    statistics recorded it. A step answered from its model's cache adds nothing.

    ``on_execution`` (the ensemble's ``ModelStatistics.record_execution``) is
    called once per request the ensemble answered, as Triton's ensemble
    scheduler reports one batch execution per successful ensemble request:
    ``execution_count`` counts ensemble requests (an ensemble never batches
    requests together), and ``batch_stats`` holds them by the request's own
    batch size (its rows; 1 when the ensemble does not batch), with the
    compute durations its steps recorded. A failed request is no execution.

    ``sequenced`` holds the indices of steps whose model is a sequence model:
    a request that needs one must name its sequence, and only those steps
    get its sequence parameters.
    """

    def __init__(
        self,
        name: str,
        version: str,
        graph: EnsembleGraph,
        signature: ModelSignature,
        runner: StepRunner,
        clock: Clock | None = None,
        refused: Mapping[int, str] | None = None,
        sleep: Sleep | None = None,
        sequenced: Collection[int] = (),
        on_execution: Callable[[int, int, int, int], None] | None = None,
    ) -> None:
        self.name = name
        self.version = version
        if sequenced:
            steps = tuple(replace(s, sequenced=s.index in sequenced) for s in graph.steps)
            graph = replace(graph, steps=steps)
        self.graph = graph
        self._on_execution = on_execution
        self.runner = runner
        self.batching = signature.max_batch_size > 0
        self.outputs = {t.name: t for t in signature.outputs}
        self.output_names = tuple(self.outputs)
        self.refused = dict(refused or {})
        self._clock = (clock if clock is not None else SystemClock()).monotonic_ns
        self._steps = {
            s.index: ControlledStep(s.label, s.model, s.version, s.control, self._clock, sleep)
            for s in graph.steps
            if controls(s.control)
        }
        """The control of each step that has one, its in-flight bound shared by every
        request; the other steps are plain calls of the runner."""
        self._plans: dict[tuple[str, ...], Plan] = {}
        self._inflight = 0
        self._closing = False
        self._idle = asyncio.Event()

    async def execute(self, call: Call | None, request: InferenceRequest) -> Outcome:
        refused = self.refusal()
        if refused is not None:
            raise refused
        wanted = wanted_outputs(request, self.output_names)
        plan = self._plans.get(wanted)
        if plan is None:
            plan = self._plans[wanted] = self._plan(wanted)
        if plan.refused is not None:
            raise ResidencyRefused(plan.refused)
        sequence = None if plan.sequenced is None else self._sequence(request, plan.sequenced)
        tensors = {t.name: t.data for t in request.inputs}
        rows = request.inputs[0].shape[0] if self.batching and request.inputs else 1
        self._inflight += 1
        try:
            with SummingSteps() as spent:
                if plan.chain is not None:
                    run = await run_chain(
                        plan.chain, self.runner, call, tensors, self._steps, sequence
                    )
                else:
                    run = await run_graph(
                        self.graph,
                        plan.steps,
                        self.runner,
                        call,
                        tensors,
                        request.parameters,
                        self._steps,
                        rows,
                        self.batching,
                        sequence,
                    )
        finally:
            self._inflight -= 1
            if self._closing and self._inflight == 0:
                self._idle.set()
        if self._on_execution is not None:
            self._on_execution(rows, spent.input_ns, spent.infer_ns, spent.output_ns)
        arrays = run.tensors
        given = tuple(w for w in wanted if w in arrays)
        response = respond(self.name, self.version, self.outputs, request, arrays, given)
        if run.skipped:
            response.parameters[SKIPPED_PARAMETER] = ",".join(run.skipped)
        if run.failed:
            response.parameters[FAILED_PARAMETER] = ",".join(run.failed)
        return Outcome(
            response, spent.queue_ns, spent.infer_ns, rows, spent.input_ns, spent.output_ns
        )

    def _plan(self, wanted: tuple[str, ...]) -> Plan:
        steps = needed_steps(self.graph, wanted)
        refused = next(
            (
                f"model {self.name!r}: {self.graph.steps[i].label}: {self.refused[i]}"
                for i in steps
                if i in self.refused
            ),
            None,
        )
        sequenced = next(
            (self.graph.steps[i].label for i in steps if self.graph.steps[i].sequenced), None
        )
        return Plan(steps, chain_of(self.graph, steps), refused, sequenced)

    def _sequence(self, request: InferenceRequest, label: str) -> dict[str, Any]:
        """The request's sequence parameters, for its sequence steps; refused when
        it names no sequence, before any step runs (the step would refuse it anyway,
        after the steps before it had run for nothing)."""
        params = request.parameters
        if SEQUENCE_ID not in params:
            raise InvalidRequest(
                f"model {self.name!r}: {label} is a sequence model: each request needs a "
                "'sequence_id' parameter (with 'sequence_start' on a sequence's first "
                "request and 'sequence_end' on its last)"
            )
        return {k: params[k] for k in (SEQUENCE_ID, SEQUENCE_START, SEQUENCE_END) if k in params}

    def refusal(self) -> ModelportError | None:
        if self._closing:
            return Unavailable(f"model {self.name!r} version {self.version} is unloading")
        return None

    async def drain_and_close(self) -> None:
        self._closing = True
        if self._inflight:
            await self._idle.wait()
