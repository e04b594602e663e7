"""Cascades: a cheap model first, a costly one only for what the cheap one is unsure of.

A model whose config holds ``modelport.cascade`` computes nothing itself. Its
stages name models that take the cascade's inputs and give its outputs; the
stages are tried in order, and the first whose ``accept`` rule holds on its
own outputs answers (the last stage always does). Each stage call goes
through the pipeline's ``StepRunner`` like an ensemble step (routed,
validated, batched and counted in that model's statistics), under the
stage's control (``steps.py``: timeout, retries, in-flight bound, optional).

Per request (the default) the rule must hold for every row. With
``per_row`` each row is judged alone: the rows a stage is sure of are
answered by it, the others go on to the next stage as one smaller batch,
and the answer is put back together in the request's row order.

Example, per row, rows 0..3: ``small`` is sure of rows 0 and 2; ``large``
gets rows 1 and 3 as a batch of two; the answer holds small's rows 0 and 2
and large's rows 1 and 3, in that order, and ``cascade_stage`` is
``"small,large,small,large"``.

The stage that answered is named in the response (``cascade_stage``) and
counted through ``answered`` (the metric ``modelport_cascade_answers``).
A caller forces the last stage with the request parameter
``cascade_force_last: true`` (audits, labelling).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from modelport.clock import Clock, SystemClock
from modelport.config.model import CascadeStage
from modelport.dataplane.rules import row_mask
from modelport.dataplane.servable import Outcome, StepRunner, respond, wanted_outputs
from modelport.dataplane.steps import ControlledStep, Sleep
from modelport.errors import InferenceFailed, ModelportError, Unavailable
from modelport.observability.statistics import SummingSteps
from modelport.types import Array, Call, InferenceRequest, ModelSignature, TensorSpec

#: The response parameter naming the stage that answered (per row: one name per row,
#: comma-separated, in row order).
STAGE_PARAMETER = "cascade_stage"

#: The request parameter that sends a request straight to the last stage.
FORCE_LAST_PARAMETER = "cascade_force_last"

#: Told, after each answer, the stage's name and how many answers it gave (requests,
#: or rows with per_row).
Answered = Callable[[str, int], None]


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage as the servable runs it: its name, rule and controlled call."""

    name: str
    config: CascadeStage
    step: ControlledStep


def stage_name(stage: CascadeStage) -> str:
    """The name responses and metrics give a stage: its own, else its model's."""
    return stage.name or stage.model


def forced_last(parameters: Mapping[str, Any]) -> bool:
    """Whether the request asks for the last stage only (``true`` or ``"true"``)."""
    value = parameters.get(FORCE_LAST_PARAMETER)
    return value is True or (isinstance(value, str) and value.lower() == "true")


def reassemble(
    pieces: Sequence[tuple[npt.NDArray[np.intp], Mapping[str, Array]]],
    names: Sequence[str],
) -> dict[str, Array]:
    """Outputs in the request's row order, from (row indices, outputs for those rows).

    Rows answered by different stages must agree in shape past the batch
    dimension; InferenceFailed says which output when they do not.
    """
    order = np.concatenate([rows for rows, _ in pieces])
    back = np.argsort(order, kind="stable")
    out: dict[str, Array] = {}
    for name in names:
        parts = [outputs[name] for _, outputs in pieces]
        try:
            joined = np.concatenate(parts)
        except ValueError as exc:
            raise InferenceFailed(f"the stages' {name!r} outputs cannot be joined: {exc}") from None
        out[name] = joined[back]
    return out


class CascadeServable:
    """The Servable of a cascade version: its stages tried through the ``StepRunner``.

    Outcome timings as for ensembles: the queue and compute time its stages
    recorded in their models' statistics, summed.
    """

    def __init__(
        self,
        name: str,
        version: str,
        stages: Sequence[CascadeStage],
        signature: ModelSignature,
        runner: StepRunner,
        per_row: bool = False,
        clock: Clock | None = None,
        answered: Answered | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.runner = runner
        self.batching = signature.max_batch_size > 0
        self.per_row = per_row and self.batching
        self.outputs: dict[str, TensorSpec] = {t.name: t for t in signature.outputs}
        self.output_names = tuple(self.outputs)
        self._clock = (clock if clock is not None else SystemClock()).monotonic_ns
        self._answered = answered
        self.stages = tuple(
            Stage(
                stage_name(s),
                s,
                ControlledStep(
                    f"stage {i} ({stage_name(s)!r})",
                    s.model,
                    None if s.version == -1 else str(s.version),
                    s,
                    self._clock,
                    sleep,
                ),
            )
            for i, s in enumerate(stages)
        )
        self._inflight = 0
        self._closing = False
        self._idle = asyncio.Event()

    async def execute(self, call: Call | None, request: InferenceRequest) -> Outcome:
        refused = self.refusal()
        if refused is not None:
            raise refused
        wanted = wanted_outputs(request, self.output_names)
        inputs = {t.name: t.data for t in request.inputs}
        rows = request.inputs[0].shape[0] if self.batching and request.inputs else 1
        stages = self.stages[-1:] if forced_last(request.parameters) else self.stages
        self._inflight += 1
        try:
            with SummingSteps() as spent:
                if self.per_row:
                    arrays, answered_by = await self._per_row(call, request, inputs, rows, stages)
                else:
                    arrays, stage = await self._per_request(call, request, inputs, rows, stages)
                    answered_by = [stage]
        finally:
            self._inflight -= 1
            if self._closing and self._inflight == 0:
                self._idle.set()
        response = respond(self.name, self.version, self.outputs, request, arrays, wanted)
        response.parameters[STAGE_PARAMETER] = ",".join(answered_by)
        if self._answered is not None:
            for stage_label, count in _counts(answered_by).items():
                self._answered(stage_label, count)
        return Outcome(
            response, spent.queue_ns, spent.infer_ns, rows, spent.input_ns, spent.output_ns
        )

    async def _per_request(
        self,
        call: Call | None,
        request: InferenceRequest,
        inputs: Mapping[str, Array],
        rows: int,
        stages: Sequence[Stage],
    ) -> tuple[dict[str, Array], str]:
        """The first stage sure of every row answers the whole request."""
        for position, stage in enumerate(stages):
            last = position == len(stages) - 1
            outputs = await self._try(stage, call, inputs, last)
            if outputs is None:
                continue
            accept = stage.config.accept
            if last or accept is None:
                return outputs, stage.name
            mask = row_mask(accept, outputs, request.parameters, rows, self.batching)
            if bool(mask.all()):
                return outputs, stage.name
        raise AssertionError("the last stage always answers")

    async def _per_row(
        self,
        call: Call | None,
        request: InferenceRequest,
        inputs: Mapping[str, Array],
        rows: int,
        stages: Sequence[Stage],
    ) -> tuple[dict[str, Array], list[str]]:
        """Each row answered by the first stage sure of it; the rest go on together."""
        pending: npt.NDArray[np.intp] = np.arange(rows, dtype=np.intp)
        pieces: list[tuple[npt.NDArray[np.intp], Mapping[str, Array]]] = []
        by_row = [""] * rows
        part: Mapping[str, Array] = inputs
        for position, stage in enumerate(stages):
            last = position == len(stages) - 1
            outputs = await self._try(stage, call, part, last)
            if outputs is None:
                continue
            accept = stage.config.accept
            count = len(pending)
            if last or accept is None:
                sure = np.ones(count, dtype=np.bool_)
            else:
                sure = row_mask(accept, outputs, request.parameters, count, True)
            taken = pending[sure]
            if taken.size:
                pieces.append((taken, {n: np.asarray(outputs[n])[sure] for n in self.output_names}))
                for row in taken:
                    by_row[row] = stage.name
            pending = pending[~sure]
            if not pending.size:
                break
            part = {n: np.asarray(a)[~sure] for n, a in part.items()}
        return reassemble(pieces, self.output_names), by_row

    async def _try(
        self, stage: Stage, call: Call | None, inputs: Mapping[str, Array], last: bool
    ) -> dict[str, Array] | None:
        """The stage's outputs; None when an optional stage (not the last) failed."""
        try:
            outputs = await stage.step.run(self.runner, call, inputs)
        except ModelportError:
            if stage.config.optional and not last:
                return None
            raise
        for name in self.output_names:
            if name not in outputs:
                raise InferenceFailed(f"{stage.step.label} gave no output {name!r}")
        return outputs

    def refusal(self) -> ModelportError | None:
        if self._closing:
            return Unavailable(f"model {self.name!r} version {self.version} is unloading")
        return None

    async def drain_and_close(self) -> None:
        self._closing = True
        if self._inflight:
            await self._idle.wait()


def _counts(names: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return counts
