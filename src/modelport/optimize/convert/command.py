"""``modelport convert``: source version → checked, timed ONNX version beside it.

The steps, each refusing before the next allocates anything:

1. locate ``REPO/model/VERSION``, read the model's config, choose the
   backend, and make sure it can be converted here (library installed);
2. choose the new version number and read the ``--data`` file;
3. load the source through its runtime, as the server would;
4. convert, and make the graph's inputs and outputs the source's;
5. write ``model.onnx`` and ``config.yaml`` into a hidden temporary
   directory in the model directory (the server ignores names that are not
   numbers), load it through the ONNX runtime and the server's config check;
6. compare answers; time both;
7. rename the directory to the version number. Any failure before this
   removes the temporary directory, so nothing is left behind.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modelport.config.model import ModelConfig, ModelInput, ModelOutput
from modelport.controlplane.repository.autoconfig import choose_backend, complete_config
from modelport.controlplane.repository.config_files import read_model_config
from modelport.controlplane.repository.layout import scan_model
from modelport.controlplane.repository.staging import copy_mode
from modelport.dataplane.runtime.base import Runtime
from modelport.errors import ModelLoadError, ModelportError
from modelport.optimize.convert.check import check_answers
from modelport.optimize.convert.comparison import CheckResult
from modelport.optimize.convert.errors import AnswersDiffer, ConversionFailed
from modelport.optimize.convert.graph import fit_signature
from modelport.optimize.convert.samples import (
    Samples,
    match_samples,
    read_data_file,
    synthetic_samples,
)
from modelport.optimize.convert.source import (
    Source,
    VersionPath,
    load_source,
    locate,
    output_version,
    read_config,
    require_converter,
)
from modelport.optimize.convert.timing import THROUGHPUT_BATCH, Clock, Speed, measure, rows
from modelport.types import DATATYPE_TO_CONFIG, ModelSignature

ONNX_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.yaml"
DEFAULT_SECONDS = 1.0


@dataclass(frozen=True)
class ConvertOptions:
    """What the user asked for; None means the documented default."""

    path: Path
    output_version: int | None = None
    data: Path | None = None
    rtol: float | None = None
    atol: float | None = None
    opset: int | None = None
    seconds: float = DEFAULT_SECONDS
    """Seconds per timing measurement per model (two measurements each); 0 skips timing."""


@dataclass
class ConvertReport:
    """What was converted, how the answers compared, how fast each side ran."""

    source: VersionPath
    backend: str
    version: int
    version_dir: Path
    signature: ModelSignature
    check: CheckResult
    original_speed: Speed | None = None
    onnx_speed: Speed | None = None
    notes: list[str] = field(default_factory=list)


def _check_options(options: ConvertOptions) -> None:
    for flag, value in (("--rtol", options.rtol), ("--atol", options.atol)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ConversionFailed(f"{flag}: must be a finite number >= 0, got {value}")
    if options.opset is not None and options.opset < 1:
        raise ConversionFailed(f"--opset: must be a positive integer, got {options.opset}")
    if not (math.isfinite(options.seconds) and options.seconds >= 0):
        raise ConversionFailed(f"--seconds: must be a number >= 0, got {options.seconds}")


def onnx_config(signature: ModelSignature) -> ModelConfig:
    """The converted version's config: the source's tensors, served by ONNX Runtime."""
    batch = 1 if signature.max_batch_size > 0 else 0
    return ModelConfig(
        backend="onnxruntime",
        platform="onnxruntime_onnx",
        max_batch_size=signature.max_batch_size,
        input=[
            ModelInput(
                name=s.name, data_type=DATATYPE_TO_CONFIG[s.datatype], dims=[*s.shape[batch:]]
            )
            for s in signature.inputs
        ],
        output=[
            ModelOutput(
                name=s.name, data_type=DATATYPE_TO_CONFIG[s.datatype], dims=[*s.shape[batch:]]
            )
            for s in signature.outputs
        ],
    )


def _config_text(config: ModelConfig, source: VersionPath, backend: str) -> str:
    data: dict[str, Any] = {
        "backend": config.backend,
        "max_batch_size": config.max_batch_size,
        "input": [t.model_dump(include={"name", "data_type", "dims"}) for t in config.input],
        "output": [t.model_dump(include={"name", "data_type", "dims"}) for t in config.output],
    }
    header = (
        f"# Written by modelport convert from version {source.version} ({backend}).\n"
        "# The inputs and outputs are the source version's: clients need no change.\n"
        "# The server reads a model's settings from the model directory's config.yaml;\n"
        "# this file records what this version takes and gives.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False)


def _samples(options: ConvertOptions, raw: dict[str, Any] | None, source: Source) -> Samples:
    if raw is None:
        # A DataFrame model's categorical columns draw from the categories it knows.
        known = getattr(source.runtime, "column_values", None)
        return synthetic_samples(source.signature, known=known() if callable(known) else None)
    return match_samples(raw, source.signature, str(options.data))


def _time_both(
    original: Runtime,
    converted: Runtime,
    signature: ModelSignature,
    samples: Samples,
    seconds: float,
    clock: Clock,
) -> tuple[Speed, Speed]:
    names = [s.name for s in signature.outputs]
    if signature.max_batch_size > 0:
        one = rows(samples.arrays, 1)
        size = min(THROUGHPUT_BATCH, signature.max_batch_size)
        batch = rows(samples.arrays, size)
    else:  # an unbatched model takes its whole tensor as one request
        one = batch = samples.arrays
        size = 1
    return (
        measure(original.predict, one, batch, size, names, seconds, clock),
        measure(converted.predict, one, batch, size, names, seconds, clock),
    )


def serving_notes(where: VersionPath, version: int, onnx_native: ModelSignature) -> list[str]:
    """What the server will make of the new version under the model's own config.

    The server reads one config per model, so a model-level ``backend``,
    ``platform`` or ``default_model_filename`` that names the source's
    framework would keep the new version from loading as ONNX.
    """
    notes: list[str] = []
    model = scan_model(where.repository, where.model)
    if model is None:
        return notes
    origin = str(model.config_file or model.path)
    version_dir = where.model_dir / str(version)
    try:
        config = read_model_config(model)
        chosen = choose_backend(config, origin, version_dir)
        if chosen.backend != "onnxruntime":
            notes.append(
                f"{origin} sets backend {chosen.backend!r}, so the server will not load version "
                f"{version} as ONNX; remove 'backend' and 'platform' there so each version's "
                "model file decides"
            )
        elif config.default_model_filename not in ("", ONNX_FILENAME):
            notes.append(
                f"{origin} sets default_model_filename {config.default_model_filename!r}; "
                f"version {version} holds {ONNX_FILENAME}"
            )
        else:
            complete_config(chosen, onnx_native, origin)
        served = config.version_policy.select(list(model.versions))
        shown = ", ".join(map(str, served)) or "none"
        notes.append(f"with this model's version_policy the server serves version(s) {shown}")
    except ModelportError as exc:
        notes.append(f"the server would refuse version {version}: {exc.message}")
    return notes


def _stage(where: VersionPath, version: int, graph: Any, config: ModelConfig, backend: str) -> Path:
    """A hidden directory in the model directory holding model.onnx and config.yaml.

    The server ignores it (version directories are numbers); it becomes the
    version only when renamed after the check.
    """
    staging: Path | None = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".convert-{version}-", dir=where.model_dir))
        (staging / ONNX_FILENAME).write_bytes(graph.SerializeToString())
        (staging / CONFIG_FILENAME).write_text(
            _config_text(config, where, backend), encoding="utf-8"
        )
    except OSError as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise ConversionFailed(f"{where.model_dir}: cannot write: {exc.strerror or exc}") from None
    return staging


def _load_staged(staging: Path, config: ModelConfig) -> Runtime:
    """The staged model through the ONNX runtime and the server's config check."""
    from modelport.dataplane.runtime.onnx import load_onnx

    try:
        runtime = load_onnx(staging, config, 1)
    except ModelLoadError as exc:
        reason = exc.message.split(": ", 1)[-1]  # the staging path means nothing to users
        raise ConversionFailed(f"ONNX Runtime cannot load the converted model: {reason}") from None
    try:
        complete_config(config, runtime.native, str(staging / CONFIG_FILENAME))
    except ModelportError as exc:
        runtime.unload()
        raise ConversionFailed(
            f"the converted model does not fit the source's signature: {exc.message}"
        ) from None
    return runtime


def convert_version(options: ConvertOptions, clock: Clock = time.perf_counter) -> ConvertReport:
    """Convert, check and time one version; raises ConversionFailed or AnswersDiffer.

    Load errors of the source (ModelLoadError, ConfigError) pass through as
    they are: they already name the file and the field.
    """
    _check_options(options)
    where = locate(options.path)
    model, config, origin = read_config(where)
    require_converter(config.backend, where.version_dir)
    version = output_version(where, model, options.output_version)
    raw = read_data_file(options.data) if options.data is not None else None

    from modelport.optimize.convert.converters import CONVERTERS

    source = load_source(where, model, config, origin)
    converted: Runtime | None = None
    staging: Path | None = None
    try:
        samples = _samples(options, raw, source)
        result = CONVERTERS[source.config.backend](source, options.opset)
        graph = fit_signature(result.model, source.signature, result.outputs)
        target_config = onnx_config(source.signature)
        staging = _stage(where, version, graph, target_config, source.config.backend)
        converted = _load_staged(staging, target_config)
        check = check_answers(
            source.runtime.predict,
            converted.predict,
            source.signature,
            samples.arrays,
            samples.rows,
            samples.synthetic,
            samples.origin,
            options.rtol,
            options.atol,
        )
        if not check.ok:
            raise AnswersDiffer("; ".join(f.problem for f in check.failures()), check)
        speeds: tuple[Speed | None, Speed | None] = (None, None)
        if options.seconds > 0:
            speeds = _time_both(
                source.runtime, converted, source.signature, samples, options.seconds, clock
            )
        target = where.model_dir / str(version)
        if target.exists():
            raise ConversionFailed(f"{target}: appeared while converting; nothing was written")
        try:
            copy_mode(staging, where.version_dir)
            os.rename(staging, target)
        except OSError as exc:
            raise ConversionFailed(f"{target}: cannot create: {exc.strerror or exc}") from None
        staging = None
        report = ConvertReport(
            where, source.config.backend, version, target, source.signature, check, *speeds
        )
        report.notes = serving_notes(where, version, converted.native)
        return report
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if converted is not None:
            converted.unload()
        source.runtime.unload()
