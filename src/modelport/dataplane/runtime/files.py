"""Which file in a version directory a backend loads.

Several backends accept more than one file name (``model.skops`` or
``model.pkl``, ``model.xml`` or ``model.onnx`` ...); Triton's
``default_model_filename`` overrides the search. One rule, one error text,
for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from modelport.config.model import ModelConfig
from modelport.errors import ModelLoadError


def model_file(version_dir: Path, config: ModelConfig, filenames: Sequence[str]) -> Path:
    """``default_model_filename`` when set, else the first of ``filenames`` present."""
    if config.default_model_filename:
        path = version_dir / config.default_model_filename
        if not path.is_file():
            raise ModelLoadError(f"{path}: no {config.default_model_filename} in version directory")
        return path
    for filename in filenames:
        path = version_dir / filename
        if path.is_file():
            return path
    raise ModelLoadError(f"{version_dir}: no {' or '.join(filenames)} in version directory")
