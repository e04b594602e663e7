"""Pre-processing for INT8 leaves nothing in the caller's working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

import modelport.examples
from modelport.optimize.tune.candidates import preprocess

EXAMPLES = Path(modelport.examples.__file__).parent / "models"


def test_preprocess_of_a_scikit_learn_graph_writes_only_into_its_work_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The breast_cancer graph holds ai.onnx.ml operators, where ONNX Runtime's
    # symbolic shape inference gives up and saves a scratch copy as it does.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(cwd)
    result = preprocess(EXAMPLES / "breast_cancer" / "1" / "model.onnx", work)
    assert result.is_file()
    assert list(cwd.iterdir()) == []
