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
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from modelport.clock import Clock, SystemClock
from modelport.config.model import EnsembleScheduling, EnsembleStep
from modelport.dataplane.servable import Outcome, StepRunner, respond, wanted_outputs
from modelport.errors import (
    ConfigError,
    InferenceFailed,
    ModelportError,
    ResidencyRefused,
    Unavailable,
)
from modelport.types import Array, Call, InferenceRequest, ModelSignature, TensorSpec

#: The field every step error names, with the step's index.
_STEP = "ensemble_scheduling.step"


@dataclass(frozen=True, slots=True)
class Step:
    """One step: its model and version, and its tensors as (model's name, ensemble's name)."""

    index: int
    model: str
    version: str | None
    """None for Triton's -1: the version the model's routing picks."""
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]

    @property
    def label(self) -> str:
        return f"step {self.index} ({self.model!r})"


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
) -> EnsembleGraph:
    """The ensemble's graph, checked; ConfigError naming ``source`` and the field.

    ``signature`` is the ensemble's own (its ``input`` and ``output``);
    ``steps[i]`` the signature of step i's model, or None where it is not
    known here (a model this node may not serve): that step's tensors are
    then taken as written.
    """
    built = tuple(_step(i, s) for i, s in enumerate(scheduling.step))
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
    order = _order(built, producer, source)
    graph = EnsembleGraph(built, order, frozenset(ours_in), producer)
    _check_edges(graph, signature, steps, ours_out, source)
    return graph


def needed_steps(graph: EnsembleGraph, wanted: Iterable[str]) -> tuple[int, ...]:
    """The steps whose outputs feed ``wanted``, in readiness order; the others are pruned."""
    needed: set[int] = set()
    todo = [graph.producer[t] for t in wanted if t in graph.producer]
    while todo:
        index = todo.pop()
        if index in needed:
            continue
        needed.add(index)
        todo += [graph.producer[t] for _, t in graph.steps[index].inputs if t in graph.producer]
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
        for _, tensor in step.inputs:
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


async def run_graph(
    graph: EnsembleGraph,
    plan: Sequence[int],
    runner: StepRunner,
    call: Call | None,
    tensors: dict[str, Array],
) -> dict[str, Array]:
    """Run the steps of ``plan``, each as soon as its tensors exist; ``tensors`` grows.

    The steps are tasks owned by this call: the first failure cancels the
    rest and is raised, and a cancelled caller cancels them all.
    """
    waiting = {i: {t for _, t in graph.steps[i].inputs if t not in tensors} for i in plan}
    running: dict[asyncio.Task[dict[str, Array]], Step] = {}

    def start_ready() -> None:
        for index in [i for i, missing in waiting.items() if not missing]:
            del waiting[index]
            step = graph.steps[index]
            inputs = {name: tensors[t] for name, t in step.inputs}
            task = asyncio.ensure_future(runner.run_step(call, step.model, step.version, inputs))
            running[task] = step

    try:
        start_ready()
        while running:
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                step = running.pop(task)
                outputs = task.result()
                for name, tensor in step.outputs:
                    if name not in outputs:
                        raise InferenceFailed(f"{step.label} gave no output {name!r}")
                    tensors[tensor] = outputs[name]
                    for missing in waiting.values():
                        missing.discard(tensor)
            start_ready()
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    return tensors


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

    async def run_step(
        self,
        call: Call | None,
        model: str,
        version: str | None,
        inputs: Mapping[str, Array],
    ) -> dict[str, Array]:
        runner = self._runner
        if runner is None:
            raise Unavailable("the server is starting: ensemble steps cannot run yet")
        return await runner.run_step(call, model, version, inputs)


class EnsembleServable:
    """The Servable of an ensemble version: its graph run through the ``StepRunner``.

    ``refused`` holds, per step index, why that step's model may not run on
    this node (its residency): a request needing such a step is refused whole
    with ResidencyRefused before any step runs.

    The Outcome's compute time is the ensemble's wall time over its steps,
    queue time 0: waiting and computing are each step model's own, in its
    statistics.
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
    ) -> None:
        self.name = name
        self.version = version
        self.graph = graph
        self.runner = runner
        self.batching = signature.max_batch_size > 0
        self.outputs = {t.name: t for t in signature.outputs}
        self.output_names = tuple(self.outputs)
        self.refused = dict(refused or {})
        self._clock = (clock if clock is not None else SystemClock()).monotonic_ns
        self._plans: dict[tuple[str, ...], tuple[int, ...]] = {}
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
            plan = self._plans[wanted] = needed_steps(self.graph, wanted)
        for index in plan:
            if index in self.refused:
                step = self.graph.steps[index]
                raise ResidencyRefused(f"model {self.name!r}: {step.label}: {self.refused[index]}")
        tensors = {t.name: t.data for t in request.inputs}
        self._inflight += 1
        start = self._clock()
        try:
            arrays = await run_graph(self.graph, plan, self.runner, call, tensors)
        finally:
            self._inflight -= 1
            if self._closing and self._inflight == 0:
                self._idle.set()
        compute = self._clock() - start
        response = respond(self.name, self.version, self.outputs, request, arrays, wanted)
        rows = request.inputs[0].shape[0] if self.batching and request.inputs else 1
        return Outcome(response, 0, compute, rows)

    def refusal(self) -> ModelportError | None:
        if self._closing:
            return Unavailable(f"model {self.name!r} version {self.version} is unloading")
        return None

    async def drain_and_close(self) -> None:
        self._closing = True
        if self._inflight:
            await self._idle.wait()
