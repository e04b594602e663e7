"""Writing the winner as a new version, all or nothing.

Everything goes into a hidden directory inside the model directory (the
server ignores names that are not numbers), is loaded back through the
server's own checks, and only then is renamed to the version number. A
rename within one directory is atomic, so the server's poller sees either
no version or a whole one; any failure removes the hidden directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from modelport.config.model import ModelConfig, parse_model_config
from modelport.controlplane.repository.staging import copy_mode
from modelport.errors import ModelportError
from modelport.optimize.convert.source import VersionPath
from modelport.optimize.tune.errors import OptimizeFailed

CONFIG_FILENAME = "config.yaml"

Check = Callable[[Path, ModelConfig], None]

#: The config fields a written version carries, in the order config.yaml lists them.
_FIELDS = (
    "backend",
    "max_batch_size",
    "input",
    "output",
    "instance_group",
    "parameters",
    "optimization",
    "modelport",
)


def config_text(config: ModelConfig, source: VersionPath, backend: str, chosen: str) -> str:
    """The version's config.yaml: the original's tensors and the chosen serving settings."""
    data: dict[str, Any] = config.model_dump(
        mode="json",
        include=set(_FIELDS),
        exclude_defaults=True,
    )
    data["backend"] = config.backend
    data["max_batch_size"] = config.max_batch_size
    data["input"] = [t.model_dump(include={"name", "data_type", "dims"}) for t in config.input]
    data["output"] = [t.model_dump(include={"name", "data_type", "dims"}) for t in config.output]
    data["instance_group"] = [
        g.model_dump(include={"count", "kind"}) for g in config.instance_group
    ]
    if config.optimization is not None and config.optimization.graph is not None:
        data["optimization"] = {"graph": {"level": config.optimization.graph.level}}
    ordered = {k: data[k] for k in _FIELDS if k in data}
    header = (
        f"# Written by modelport optimize from version {source.version} ({backend}): "
        f"candidate {chosen}.\n"
        "# The inputs and outputs are the original's: clients need no change.\n"
        "# The server reads a model's settings from the model directory's config.yaml;\n"
        "# copy instance_group, parameters and optimization there to serve with them.\n"
    )
    if config.backend == "openvino":
        header += (
            "# Copy backend too: without backend: openvino there, ONNX Runtime serves\n"
            "# model.onnx (in FP32) instead of OpenVINO.\n"
        )
    return header + yaml.safe_dump(ordered, sort_keys=False)


def _copy_model(model: Path, staging: Path) -> None:
    """An ONNX file as model.onnx, or a native version directory's files as they are."""
    if model.is_file():
        shutil.copyfile(model, staging / "model.onnx")
        return
    for item in model.iterdir():
        if item.name in (CONFIG_FILENAME, "report.json", "report.md"):
            continue
        if item.is_dir():
            shutil.copytree(item, staging / item.name)
        else:
            shutil.copy2(item, staging / item.name)


def write_version(
    where: VersionPath,
    version: int,
    model: Path,
    config: str,
    extra: Mapping[str, str],
    check: Check,
) -> Path:
    """Stage, check and rename; returns the version directory. Nothing stays on failure."""
    target = where.model_dir / str(version)
    staging: Path | None = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".optimize-{version}-", dir=where.model_dir))
        _copy_model(model, staging)
        (staging / CONFIG_FILENAME).write_text(config, encoding="utf-8")
        for name, text in extra.items():
            (staging / name).write_text(text, encoding="utf-8")
        parsed = parse_model_config(yaml.safe_load(config), str(staging / CONFIG_FILENAME))
        try:
            check(staging, parsed)
        except ModelportError as exc:
            reason = exc.message.split(": ", 1)[-1]
            raise OptimizeFailed(f"the optimized model does not load: {reason}") from None
        if target.exists():
            raise OptimizeFailed(f"{target}: appeared while optimizing; nothing was written")
        copy_mode(staging, where.version_dir)
        os.rename(staging, target)
        staging = None
    except OSError as exc:
        raise OptimizeFailed(f"{where.model_dir}: cannot write: {exc.strerror or exc}") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return target
