"""``modelport optimize``: a version → judged, timed candidates → the winner as a new version.

The steps, each refusing before the next allocates anything:

1. locate ``REPO/model/VERSION``, read its config, refuse a backend that has
   no ONNX form (python, mlflow); choose the next free version number;
2. read ``--data`` (and ``--labels``); load the version as the server would;
   match the rows to its inputs, split them (calibration / held out);
3. build the candidates in a temporary work directory (outside the
   repository), load each through the modelport runtime that would serve it
   (ONNX Runtime, OpenVINO, or the model's own framework) with the settings
   it would be served with, judge it on the held-out rows, time it at every
   thread count;
4. choose the best candidate other than the version as it is, and time the
   two again over alternating rounds: unless the candidate is faster beyond
   measurement noise (``choose.beyond_noise``), keep the current version and
   write nothing;
5. write model, config.yaml, report.json and report.md into a hidden
   directory in the model directory, load it through the server's checks,
   and rename it to the version number. Any failure removes the hidden
   directory: the original is never touched, and no half-written version
   is left behind.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from modelport.config.model import (
    GraphOptimization,
    InstanceGroup,
    ModelConfig,
    Optimization,
    Parameter,
)
from modelport.controlplane.repository.autoconfig import complete_config
from modelport.dataplane.runtime import runtime_loader
from modelport.dataplane.runtime.base import Runtime
from modelport.errors import ModelportError, first_line
from modelport.optimize.convert.command import onnx_config, serving_notes
from modelport.optimize.convert.source import (
    CONVERTER_PACKAGES,
    Source,
    VersionPath,
    load_source,
    locate,
    output_version,
    read_config,
    require_converter,
)
from modelport.optimize.tune import candidates as build
from modelport.optimize.tune.candidates import Candidate, Progress, Skipped
from modelport.optimize.tune.choose import OBJECTIVES, NoiseCheck, Outcome, decide
from modelport.optimize.tune.data import (
    Split,
    load_samples,
    read_labels,
    read_samples,
    split_rows,
)
from modelport.optimize.tune.errors import OptimizeFailed
from modelport.optimize.tune.hardware import Hardware, detect_hardware
from modelport.optimize.tune.measure import (
    Clock,
    batch_sizes,
    instances_for,
    predict_all,
    thread_counts,
    time_candidate,
)
from modelport.optimize.tune.metrics import DEFAULT_BUDGET, choose_metric, judge
from modelport.optimize.tune.noise import mark_beyond_noise, mark_within_noise, noise_check
from modelport.optimize.tune.report import OptimizeReport, report_markdown, report_text
from modelport.optimize.tune.written import config_text, write_version
from modelport.types import Array

DEFAULT_SECONDS = 0.5
TARGETS = ("cpu", "gpu")


@dataclass(frozen=True)
class OptimizeOptions:
    """What the user asked for; the defaults are the documented ones."""

    path: Path
    data: Path
    labels: Path | None = None
    metric: str | None = None
    budget: float = DEFAULT_BUDGET
    objective: str = "latency"
    target: str = "cpu"
    seconds: float = DEFAULT_SECONDS
    """Seconds per latency measurement (throughput sizes get half each)."""
    write_within_noise: bool = False
    """Write the best candidate even if it does not beat the current version beyond noise."""


def _check_options(options: OptimizeOptions) -> None:
    if options.objective not in OBJECTIVES:
        raise OptimizeFailed(
            f"--objective: expected {' or '.join(OBJECTIVES)}, got {options.objective!r}"
        )
    if options.target not in TARGETS:
        raise OptimizeFailed(f"--target: expected cpu or gpu, got {options.target!r}")
    if not (math.isfinite(options.seconds) and options.seconds > 0):
        raise OptimizeFailed(f"--seconds: must be a number > 0, got {options.seconds}")


def _require_optimizable(backend: str, where: VersionPath) -> None:
    if backend == "onnxruntime":
        return
    if backend not in CONVERTER_PACKAGES:
        raise OptimizeFailed(
            f"{where.version_dir}: a {backend!r} model cannot be optimized: it has no ONNX form "
            "to rewrite or quantize (optimizable: ONNX, scikit-learn, XGBoost, LightGBM, PyTorch)"
        )
    require_converter(backend, where.version_dir)


def serving_config(
    candidate: Candidate, source: Source, threads: int, instances: int
) -> ModelConfig:
    """The config a candidate is served with: the original's tensors plus the chosen settings.

    A native candidate keeps the original's whole config (its ``modelport``
    block may say how to call the model); an ONNX one gets convert's ONNX
    config, with ``backend: openvino`` for an OpenVINO candidate. All get
    their backend's thread parameter (OpenVINO's is ``INFERENCE_NUM_THREADS``,
    ONNX Runtime's ``intra_op_thread_count``), the candidate's own
    parameters, and the instance group.
    """
    if candidate.backend == "openvino":
        base = onnx_config(source.signature).model_copy(
            update={"backend": "openvino", "platform": ""}
        )
        thread_key = "INFERENCE_NUM_THREADS"
    elif candidate.backend == "onnxruntime":
        base, thread_key = onnx_config(source.signature), "intra_op_thread_count"
    else:
        base, thread_key = source.config, "intra_op_thread_count"
    kind = "KIND_GPU" if candidate.gpu else "KIND_CPU"
    update: dict[str, Any] = {
        "instance_group": [InstanceGroup(count=instances, kind=kind)],
        "parameters": {
            **base.parameters,
            thread_key: Parameter(string_value=str(threads)),
            **{k: Parameter(string_value=v) for k, v in candidate.parameters.items()},
        },
    }
    if candidate.backend == "onnxruntime":
        update["optimization"] = Optimization(graph=GraphOptimization(level=candidate.graph_level))
    return base.model_copy(update=update)


def _load(candidate: Candidate, source: Source, threads: int) -> Runtime:
    """The candidate as the server would load it, computing on ``threads`` threads."""
    config = serving_config(candidate, source, threads, 1)
    if candidate.path.is_file():  # an ONNX file in the work directory, or the original's
        config = config.model_copy(update={"default_model_filename": candidate.path.name})
        return runtime_loader(candidate.backend)(candidate.path.parent, config, 1)
    return runtime_loader(candidate.backend)(candidate.path, config, 1)


def _evaluate(
    candidate: Candidate,
    source: Source,
    split: Split,
    original: Mapping[str, Array],
    options: OptimizeOptions,
    metric: str,
    hardware: Hardware,
    progress: Progress,
    clock: Clock,
) -> Outcome:
    signature = source.signature
    outcome = Outcome(candidate.name, candidate.description, dict(candidate.settings))
    if candidate.path.is_file():
        outcome.size_bytes = candidate.path.stat().st_size
    else:
        outcome.size_bytes = sum(p.stat().st_size for p in candidate.path.rglob("*") if p.is_file())
    names = [s.name for s in signature.outputs]
    counts = thread_counts(hardware.cores)
    sizes = batch_sizes(signature.max_batch_size)
    for step, threads in enumerate(counts):
        progress(f"timing {candidate.name}", step, len(counts))
        try:
            runtime = _load(candidate, source, threads)
        except ModelportError as exc:
            outcome.failed = f"cannot load: {exc.message.split(': ', 1)[-1]}"
            return outcome
        try:
            if outcome.judgement is None:
                answers = predict_all(
                    runtime.predict, split.held_out, names, signature.max_batch_size
                )
                outcome.judgement = judge(
                    metric, options.budget, signature, original, answers, split.labels
                )
            outcome.timings.append(
                time_candidate(
                    runtime.predict, split.held_out, names, threads, sizes, options.seconds, clock
                )
            )
        except ModelportError as exc:
            outcome.failed = f"cannot run: {exc.message}"
            return outcome
        except Exception as exc:  # ONNX Runtime raises its own unexported error types
            first = first_line(exc)
            outcome.failed = f"cannot run: {first}"
            return outcome
        finally:
            runtime.unload()
    progress(f"timing {candidate.name}", len(counts), len(counts))
    return outcome


def _onnx_base(source: Source, work: Path) -> Path:
    """The ONNX model the candidates start from: the version's own, or its conversion."""
    if source.config.backend == "onnxruntime":
        filename = source.config.default_model_filename or build.MODEL_FILENAME
        return source.where.version_dir / filename
    from modelport.optimize.convert.converters import CONVERTERS
    from modelport.optimize.convert.graph import fit_signature

    result = CONVERTERS[source.config.backend](source, None)
    graph = fit_signature(result.model, source.signature, result.outputs)
    target = work / "converted" / build.MODEL_FILENAME
    target.parent.mkdir()
    onnx.save(graph, str(target))
    return target


def _build(
    source: Source,
    split: Split,
    hardware: Hardware,
    options: OptimizeOptions,
    work: Path,
    progress: Progress,
) -> tuple[list[Candidate], list[Skipped], list[Outcome]]:
    """Every applicable candidate; skipped ones with reasons; failed builds as outcomes."""
    made: list[Candidate] = []
    failed: list[Outcome] = []

    def attempt(name: str, description: str, make: Callable[[], list[Candidate]]) -> None:
        try:
            made.extend(make())
        except Exception as exc:  # one broken variant never stops the others
            first = first_line(exc)
            failed.append(Outcome(name, description, failed=f"cannot build: {first}"))

    native = source.config.backend != "onnxruntime"
    if native:
        made.append(
            Candidate(
                f"native-{source.config.backend}",
                f"the original {source.config.backend} model on its own runtime",
                source.where.version_dir,
                backend=source.config.backend,
                settings={"runtime": source.config.backend},
            )
        )
    else:
        made.append(
            Candidate(
                "original",
                "the version as it is, served with graph level 'all' (the default)",
                _onnx_base(source, work),
                settings={"graph_level": "all"},
            )
        )
    try:
        base = _onnx_base(source, work) if native else made[0].path
    except Exception as exc:
        first = first_line(exc)
        failed.append(Outcome("onnx", "conversion to ONNX", failed=f"cannot convert: {first}"))
        return made, build.provider_notes(hardware, options.target), failed
    if native:
        made.append(
            Candidate(
                "onnx",
                f"converted from {source.config.backend} to ONNX, graph level 'all'",
                base,
                settings={"graph_level": "all"},
            )
        )
    attempt("fp32-graph", "graph levels", lambda: build.graph_level_candidates(base, work))
    skipped = build.provider_notes(hardware, options.target)
    graph = onnx.load(str(base), load_external_data=False)
    why_not = build.quantizable(graph)
    if why_not:
        skipped.insert(0, Skipped("int8", why_not))
    else:
        pre = build.preprocess(base, work)
        attempt("int8-dynamic", "INT8 dynamic", lambda: [build.dynamic_int8(pre, work)])
        for per_channel in (False, True):
            name = "int8-static-per-channel" if per_channel else "int8-static"
            attempt(
                name,
                "INT8 static QDQ",
                lambda pc=per_channel: [  # type: ignore[misc]
                    build.static_int8(pre, work, split.calibration, hardware, pc, progress)
                ],
            )
    if options.target == "gpu" and "CUDAExecutionProvider" in hardware.providers:
        attempt("fp16-cuda", "FP16 on CUDA", lambda: [build.fp16(base, work)])
    refusal = build.openvino_refusal(graph) if hardware.openvino else ""
    if refusal:
        skipped.append(Skipped("openvino", refusal))
    elif hardware.openvino:
        on_openvino, not_tried = build.openvino_candidates(base, hardware)
        made.extend(on_openvino)
        skipped.extend(not_tried)
        static = next((c for c in made if c.name == "int8-static"), None)
        if static is not None:
            made.append(build.openvino_int8(static))
        elif not why_not:
            skipped.append(Skipped("openvino-int8", "the static INT8 model failed to build"))
    return made, skipped, failed


def optimize_version(
    options: OptimizeOptions,
    progress: Progress | None = None,
    clock: Clock = time.perf_counter,
    hardware: Hardware | None = None,
) -> OptimizeReport:
    """Optimize one version; raises OptimizeFailed (or a load error) with nothing written."""
    _check_options(options)
    tick: Progress = progress or (lambda task, done, total: None)
    where = locate(options.path)
    model, config, origin = read_config(where)
    _require_optimizable(config.backend, where)
    version = output_version(where, model, None)
    raw = read_samples(options.data)
    hardware = hardware or detect_hardware()
    source = load_source(where, model, config, origin)
    try:
        samples = load_samples(options.data, raw, source.signature)
        labels = read_labels(options.labels, samples.rows) if options.labels else None
        metric = choose_metric(options.metric, source.signature, labels is not None)
        split = split_rows(samples, labels)
        with tempfile.TemporaryDirectory(prefix="modelport-optimize-") as tmp:
            return _optimize(
                source,
                split,
                metric,
                version,
                labels is not None,
                options,
                hardware,
                Path(tmp),
                tick,
                clock,
            )
    finally:
        source.runtime.unload()


def _optimize(
    source: Source,
    split: Split,
    metric: str,
    version: int,
    labels: bool,
    options: OptimizeOptions,
    hardware: Hardware,
    work: Path,
    tick: Progress,
    clock: Clock,
) -> OptimizeReport:
    """Build, judge and time the candidates (the source still loaded: converters read it)."""
    where, config = source.where, source.config
    names = [s.name for s in source.signature.outputs]
    original = predict_all(
        source.runtime.predict, split.held_out, names, source.signature.max_batch_size
    )
    made, skipped, outcomes = _build(source, split, hardware, options, work, tick)
    by_name = {c.name: c for c in made}
    for candidate in made:
        outcomes.append(
            _evaluate(candidate, source, split, original, options, metric, hardware, tick, clock)
        )
    order = {c.name: i for i, c in enumerate(made)}
    outcomes.sort(key=lambda o: order.get(o.name, len(order)))
    current = next(o for o in outcomes if o.name == made[0].name)
    noise: NoiseCheck | None = None
    kept = ""
    if options.write_within_noise:
        winner = decide(outcomes, options.objective, hardware.cores)
    else:
        winner = decide(outcomes, options.objective, hardware.cores, exclude=current.name)
        if winner is None and current.eligible and current.best is not None:
            winner, kept = current, "no other candidate ran within the budget"
            current.status, current.reason = "kept", f"the current version: {kept}"
        elif (
            winner is not None
            and winner.best is not None
            and current.eligible
            and current.best is not None
        ):
            sides = ((by_name[current.name], current.best), (by_name[winner.name], winner.best))
            noise = noise_check(
                sides,
                lambda candidate, threads: _load(candidate, source, threads),
                split.held_out,
                names,
                options.objective,
                options.seconds,
                hardware.cores,
                clock,
            )
            if not noise.beats:
                kept = (
                    "no candidate beat the current version beyond measurement noise "
                    f"(±{noise.noise:.1%})"
                )
                mark_within_noise(current, winner, noise)
                winner = current
            else:
                mark_beyond_noise(current, winner, noise)
    if winner is None or winner.best is None:
        reasons = "; ".join(f"{o.name}: {o.reason}" for o in outcomes)
        raise OptimizeFailed(f"no candidate ran within the budget ({reasons}); nothing written")
    chosen = by_name[winner.name]
    threads = winner.best.threads
    report = OptimizeReport(
        source=where,
        backend=config.backend,
        hardware=hardware,
        metric=metric,
        budget=options.budget,
        objective=options.objective,
        signature=source.signature,
        calibration_rows=split.calibration_rows,
        held_out_rows=split.held_out_rows,
        labels=labels,
        outcomes=outcomes,
        skipped=skipped,
        winner=winner,
        threads=threads,
        instances=instances_for(threads, hardware.cores),
        graph_level=chosen.graph_level if chosen.backend == "onnxruntime" else None,
        served_by=chosen.backend,
        kept=kept,
        noise=noise,
    )
    target_config = serving_config(chosen, source, threads, report.instances)
    report.parameters = {k: p.string_value for k, p in target_config.parameters.items()}
    if kept:
        report.notes = [
            f"version {where.version} stays as it is; nothing was written "
            "(--write-within-noise writes the best candidate anyway)"
        ]
        return report
    report.version, report.version_dir = version, where.model_dir / str(version)
    write_version(
        where,
        version,
        chosen.path,
        config_text(target_config, where, config.backend, winner.name),
        {"report.json": report_text(report), "report.md": report_markdown(report)},
        _check_staged,
    )
    report.notes = _notes(where, version, chosen, metric, labels)
    return report


def _check_staged(staging: Path, config: ModelConfig) -> None:
    """Load the staged version as the server would, and check its config against it."""
    runtime = runtime_loader(config.backend)(staging, config, 1)
    try:
        complete_config(config, runtime.native, str(staging / "config.yaml"))
    finally:
        runtime.unload()


def _notes(
    where: VersionPath, version: int, chosen: Candidate, metric: str, labels: bool
) -> list[str]:
    notes: list[str] = []
    if metric == "accuracy" and not labels:
        notes.append(
            "no --labels: accuracy was judged as top-1 agreement with the original's answers"
        )
    if chosen.backend == "onnxruntime":
        from modelport.dataplane.runtime.onnx import load_onnx

        path = where.model_dir / str(version)
        runtime = load_onnx(path, ModelConfig(), 1)
        native = runtime.native
        runtime.unload()
        notes.extend(serving_notes(where, version, native))
    elif chosen.backend == "openvino":
        notes.append(
            f"version {version} holds model.onnx, which the server serves with ONNX Runtime "
            "unless the model directory's config.yaml says backend: openvino; copy backend "
            "and parameters (HINT_BF16 included) from the version's config.yaml, and run "
            "pip install 'modelport[openvino]' where the server runs"
        )
    notes.append(
        f"the settings (backend, threads, instances, graph level) are in "
        f"{where.model_dir / str(version)}"
        "/config.yaml; the server reads the model directory's config.yaml, so copy them there "
        "to serve with them"
    )
    return notes
