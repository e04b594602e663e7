"""``modelport convert`` on the command line: output, --json and exit codes 0, 1 and 2."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import skops.io as sio
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from modelport.cli.main import app
from modelport.optimize.convert import converters

CANCER_X, CANCER_Y = load_breast_cancer(return_X_y=True)


@pytest.fixture(scope="module")
def model() -> Pipeline:
    return fitted(CANCER_Y)


def fitted(labels: np.ndarray) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(CANCER_X, labels)


@pytest.fixture
def repo(tmp_path: Path, model: Pipeline) -> Path:
    path = tmp_path / "repo" / "cancer" / "1"
    path.mkdir(parents=True)
    sio.dump(model, path / "model.skops")
    return tmp_path / "repo"


def run(*args: str) -> Any:
    return CliRunner().invoke(app, ["convert", *args])


def test_tables_name_the_data_the_outputs_and_the_speed(repo: Path) -> None:
    result = run(str(repo / "cancer" / "1"), "--seconds", "0.01")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "version 2" in out
    assert "synthetic" in out and "--data" in out
    assert "probabilities" in out and "rtol 1e-04, atol 1e-05" in out
    assert "p50 latency, batch 1" in out and "throughput, batch 64" in out
    assert (repo / "cancer" / "2" / "model.onnx").is_file()


def test_the_new_version_has_the_mode_of_its_sibling(repo: Path) -> None:
    # mkdtemp makes 0700: a server running as another user could not read it.
    source = repo / "cancer" / "1"
    source.chmod(0o751)
    result = run(str(source), "--seconds", "0")
    assert result.exit_code == 0, result.output
    written = repo / "cancer" / "2"
    assert stat.S_IMODE(written.stat().st_mode) == 0o751
    sibling_file = stat.S_IMODE((source / "model.skops").stat().st_mode)
    for path in written.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == sibling_file, path


def test_json_report(repo: Path, tmp_path: Path) -> None:
    data = tmp_path / "rows.csv"
    np.savetxt(data, CANCER_X[:20], delimiter=",")
    result = run(str(repo / "cancer" / "1"), "--data", str(data), "--json", "--seconds", "0")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["ok"] is True
    assert body["output"]["version"] == 2
    assert body["check"]["rows"] == 20
    assert body["check"]["synthetic"] is False
    assert {o["name"] for o in body["check"]["outputs"]} == {"label", "probabilities"}
    assert body["speed"] is None
    assert body["signature"]["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]


def test_different_answers_exit_1(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = fitted(1 - CANCER_Y)

    def wrong(source: Any, opset: int | None) -> Any:
        decoy = dataclasses.replace(source, runtime=SimpleNamespace(estimator=other))
        return converters.convert_sklearn(decoy, opset)

    monkeypatch.setitem(converters.CONVERTERS, "sklearn", wrong)
    result = run(str(repo / "cancer" / "1"), "--json")
    assert result.exit_code == 1
    body = json.loads(result.stdout)
    assert body["ok"] is False
    assert "'label'" in body["error"]
    assert "nothing was written" in result.stderr
    assert sorted(p.name for p in (repo / "cancer").iterdir()) == ["1"]


def test_bad_input_exits_2_with_the_reason(repo: Path) -> None:
    result = run(str(repo / "cancer"))
    assert result.exit_code == 2
    assert "not a version directory" in result.stderr
    result = run(str(repo / "cancer" / "1"), "--data", str(repo / "rows.parquet"))
    assert result.exit_code == 2
    assert "unknown file type '.parquet'" in result.stderr


def test_help_states_the_default_tolerances() -> None:
    result = CliRunner().invoke(app, ["convert", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "1e-4" in result.stdout and "1e-5" in result.stdout
