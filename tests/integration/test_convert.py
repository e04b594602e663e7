"""``modelport convert`` end to end: convert with the real command, serve both versions, compare.

A scikit-learn pipeline, an XGBoost and a LightGBM booster and a PyTorch
ExportedProgram are trained here on data sets that ship with scikit-learn
and saved in their own formats, each model's config serving every version.
Version 1 of each is converted by running ``python -m modelport convert``
with the training rows as ``--data``; then the server is started on the
repository and, through tritonclient HTTP, version 2 (ONNX) must describe
itself as version 1 does and answer the same rows the same way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io as sio
import tritonclient.http as httpclient
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tests.integration.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.integration

CANCER_X, CANCER_Y = load_breast_cancer(return_X_y=True)
IRIS_X, IRIS_Y = load_iris(return_X_y=True)
CANCER_X, IRIS_X = CANCER_X.astype(np.float32), IRIS_X.astype(np.float32)
EVERY_VERSION = "version_policy: {all: {}}\n"


@dataclass
class Case:
    """A model to convert: its input's name and the rows it is checked and served on."""

    input_name: str
    x: np.ndarray


def _version(root: Path, name: str) -> Path:
    path = root / name / "1"
    path.mkdir(parents=True)
    (root / name / "config.yaml").write_text(EVERY_VERSION)
    return path


def _sklearn(root: Path) -> Case:
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    sio.dump(model.fit(CANCER_X, CANCER_Y), _version(root, "sk_cancer") / "model.skops")
    return Case("input", CANCER_X)


def _xgboost(root: Path) -> Case:
    import xgboost as xgb

    model = xgb.XGBClassifier(n_estimators=20, max_depth=3).fit(CANCER_X, CANCER_Y)
    model.get_booster().save_model(str(_version(root, "xgb_cancer") / "model.ubj"))
    return Case("input", CANCER_X)


def _lightgbm(root: Path) -> Case:
    import lightgbm as lgb

    model = lgb.LGBMClassifier(n_estimators=20, verbose=-1).fit(IRIS_X, IRIS_Y)
    model.booster_.save_model(str(_version(root, "lgb_iris") / "model.txt"))
    return Case("input", IRIS_X)


def _pytorch(root: Path) -> Case:
    import torch
    from torch import nn

    class Classifier(nn.Module):
        """Standardise, then Linear 30 -> 8 -> 2."""

        def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
            super().__init__()
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)
            self.hidden = nn.Linear(30, 8)
            self.out = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.hidden((x - self.mean) / self.std)))

    torch.manual_seed(0)
    x = torch.from_numpy(CANCER_X)
    module = Classifier(x.mean(0), x.std(0)).eval()
    program = torch.export.export(
        module, (torch.zeros(4, 30),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}
    )
    torch.export.save(program, str(_version(root, "torch_cancer") / "model.pt2"))
    return Case("x", CANCER_X)


def run_convert(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelport", "convert", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@dataclass
class Converted:
    root: Path
    cases: dict[str, Case]
    reports: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    root = tmp_path_factory.mktemp("convert_repo")
    data_dir = tmp_path_factory.mktemp("convert_data")
    cases = {
        "sk_cancer": _sklearn(root),
        "xgb_cancer": _xgboost(root),
        "lgb_iris": _lightgbm(root),
        "torch_cancer": _pytorch(root),
    }
    reports = {}
    for name, case in cases.items():
        data = data_dir / f"{name}.npz"
        np.savez(data, **{case.input_name: case.x})
        done = run_convert(
            str(root / name / "1"), "--data", str(data), "--json", "--seconds", "0.05"
        )
        assert done.returncode == 0, f"{name}:\n{done.stdout}\n{done.stderr}"
        reports[name] = json.loads(done.stdout)
    return Converted(root, cases, reports)


@pytest.fixture(scope="module")
def server(converted: Converted, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(converted.root, tmp_path_factory.mktemp("convert_log") / "server.log")
    yield srv
    stop_server(srv)


MODELS = ["sk_cancer", "xgb_cancer", "lgb_iris", "torch_cancer"]
#: Rows per request: the default max_batch_size of an unconfigured model.
BATCH = 64


@pytest.mark.parametrize("name", MODELS)
def test_the_command_reports_a_passing_check_and_both_speeds(
    converted: Converted, name: str
) -> None:
    report = converted.reports[name]
    assert report["ok"] is True
    assert report["output"]["version"] == 2
    assert report["check"]["synthetic"] is False
    assert report["check"]["rows"] == len(converted.cases[name].x)
    assert all(o["ok"] for o in report["check"]["outputs"])
    for side in ("original", "onnx"):
        assert report["speed"][side]["rows_per_s"] > 0
    files = sorted(p.name for p in (converted.root / name / "2").iterdir())
    assert files == ["config.yaml", "model.onnx"]


@pytest.mark.parametrize("name", MODELS)
def test_the_converted_version_describes_itself_as_the_original(http: Any, name: str) -> None:
    original = http.get_model_metadata(name, "1")
    onnx = http.get_model_metadata(name, "2")
    assert onnx["platform"] == "onnxruntime_onnx"
    assert onnx["inputs"] == original["inputs"]
    assert onnx["outputs"] == original["outputs"]


def _infer(
    http: Any, name: str, version: str, x: np.ndarray, input_name: str, outputs: list[str]
) -> dict[str, Any]:
    tensor = httpclient.InferInput(input_name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    requested = [httpclient.InferRequestedOutput(o) for o in outputs]
    result = http.infer(name, [tensor], model_version=version, outputs=requested)
    return {o: result.as_numpy(o) for o in outputs}


@pytest.mark.parametrize("name", MODELS)
def test_the_converted_version_answers_as_the_original(
    http: Any, converted: Converted, name: str
) -> None:
    case = converted.cases[name]
    metadata = http.get_model_metadata(name, "1")
    outputs = {o["name"]: o["datatype"] for o in metadata["outputs"]}
    for start in range(0, len(case.x), BATCH):  # every row, in requests the server accepts
        x = case.x[start : start + BATCH]
        original = _infer(http, name, "1", x, case.input_name, list(outputs))
        onnx = _infer(http, name, "2", x, case.input_name, list(outputs))
        for output, datatype in outputs.items():
            assert onnx[output].dtype == original[output].dtype
            assert onnx[output].shape == original[output].shape
            if datatype.startswith("FP"):
                np.testing.assert_allclose(onnx[output], original[output], rtol=1e-4, atol=1e-5)
            else:
                np.testing.assert_array_equal(onnx[output], original[output])


def test_a_failed_check_leaves_the_repository_as_it_was(converted: Converted) -> None:
    model_dir = converted.root / "sk_cancer"
    before = sorted(p.name for p in model_dir.iterdir())
    done = run_convert(str(model_dir / "1"), "--rtol", "0", "--atol", "0", "--seconds", "0")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "output 'probabilities'" in done.stderr
    assert "max abs diff" in done.stderr and "at row" in done.stderr
    assert sorted(p.name for p in model_dir.iterdir()) == before


def test_an_onnx_version_is_refused_with_exit_code_2(converted: Converted) -> None:
    done = run_convert(str(converted.root / "sk_cancer" / "2"))
    assert done.returncode == 2
    assert "already ONNX" in done.stderr
