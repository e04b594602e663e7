"""Declarative settings the ONNX runtime applies at load (what optimize writes)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from modelport.config.model import parse_model_config
from modelport.dataplane.runtime.onnx import load_onnx
from modelport.errors import ModelLoadError


def _config(extra: dict[str, object]) -> object:
    return parse_model_config({"max_batch_size": 8, **extra}, "test")


@pytest.mark.parametrize("mode", ["sequential", "parallel", "0", "1"])
def test_execution_mode_loads(repo: Path, mode: str) -> None:
    config = _config(
        {
            "parameters": {
                "execution_mode": {"string_value": mode},
                "intra_op_thread_count": {"string_value": "1"},
            },
            "optimization": {"graph": {"level": 1}},
        }
    )
    runtime = load_onnx(repo, config, 1)  # type: ignore[arg-type]
    expected = (
        ort.ExecutionMode.ORT_PARALLEL
        if mode in ("parallel", "1")
        else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    assert runtime._session.get_session_options().execution_mode == expected
    runtime.unload()


def test_bad_execution_mode_names_the_field(repo: Path) -> None:
    config = _config({"parameters": {"execution_mode": {"string_value": "fast"}}})
    with pytest.raises(ModelLoadError, match=r"parameters\.execution_mode: expected sequential"):
        load_onnx(repo, config, 1)  # type: ignore[arg-type]
