"""XGBoost, LightGBM and PyTorch versions converted, with the served signature kept.

Each model is trained (or built) here, saved in its framework's own format,
converted, and the new version loaded through the ONNX runtime: its
signature must be the source's, and its answers the source's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from modelport.config.model import parse_model_config
from modelport.dataplane.runtime.onnx import load_onnx
from modelport.optimize.convert.command import ConvertOptions, ConvertReport, convert_version
from modelport.types import TensorSpec

CANCER_X, CANCER_Y = load_breast_cancer(return_X_y=True)
IRIS_X, IRIS_Y = load_iris(return_X_y=True)
DIABETES_X, DIABETES_Y = load_diabetes(return_X_y=True)


def add_version(repo: Path, name: str) -> Path:
    path = repo / name / "1"
    path.mkdir(parents=True)
    return path


def convert(path: Path, data: Path | None = None) -> ConvertReport:
    return convert_version(ConvertOptions(path=path, data=data, seconds=0))


def served(path: Path) -> tuple[TensorSpec, ...]:
    """The new version's tensors as the ONNX runtime reports them."""
    config = parse_model_config(yaml.safe_load((path / "config.yaml").read_text()), "config")
    runtime = load_onnx(path, config, 1)
    native = runtime.native
    runtime.unload()
    return (*native.inputs, *native.outputs)


def test_xgboost_classifier_with_a_double_input(tmp_path: Path) -> None:
    xgb = pytest.importorskip("xgboost")
    model = xgb.XGBClassifier(n_estimators=15, max_depth=3).fit(CANCER_X, CANCER_Y)
    model.get_booster().save_model(str(add_version(tmp_path, "xgb") / "model.ubj"))
    (tmp_path / "xgb" / "config.yaml").write_text(
        "input:\n- {name: features, data_type: TYPE_FP64, dims: [30]}\n"
    )
    data = tmp_path / "rows.npz"
    np.savez(data, features=CANCER_X)
    report = convert(tmp_path / "xgb" / "1", data)
    assert report.check.ok
    assert served(tmp_path / "xgb" / "2") == (
        TensorSpec("features", "FP64", (-1, 30)),
        TensorSpec("probabilities", "FP32", (-1, 2)),
        TensorSpec("label", "INT64", (-1, 1)),
    )


def test_xgboost_after_early_stopping_converts_the_best_iteration(tmp_path: Path) -> None:
    xgb = pytest.importorskip("xgboost")
    model = xgb.XGBClassifier(
        n_estimators=200, max_depth=3, learning_rate=0.5, early_stopping_rounds=5
    )
    model.fit(CANCER_X[:400], CANCER_Y[:400], eval_set=[(CANCER_X[400:], CANCER_Y[400:])])
    booster = model.get_booster()
    assert int(booster.attr("best_iteration")) + 1 < booster.num_boosted_rounds()
    booster.save_model(str(add_version(tmp_path, "early") / "model.ubj"))
    data = tmp_path / "rows.npy"
    np.save(data, CANCER_X)
    assert convert(tmp_path / "early" / "1", data).check.ok


def test_xgboost_regressor(tmp_path: Path) -> None:
    xgb = pytest.importorskip("xgboost")
    model = xgb.XGBRegressor(n_estimators=15, max_depth=3).fit(DIABETES_X, DIABETES_Y)
    model.get_booster().save_model(str(add_version(tmp_path, "xgb") / "model.json"))
    data = tmp_path / "rows.npy"
    np.save(data, DIABETES_X)
    assert convert(tmp_path / "xgb" / "1", data).check.ok
    assert served(tmp_path / "xgb" / "2")[1] == TensorSpec("predictions", "FP32", (-1, 1))


def test_lightgbm_multiclass_keeps_double_probabilities(tmp_path: Path) -> None:
    lgb = pytest.importorskip("lightgbm")
    model = lgb.LGBMClassifier(n_estimators=15, verbose=-1).fit(IRIS_X, IRIS_Y)
    model.booster_.save_model(str(add_version(tmp_path, "lgb") / "model.txt"))
    data = tmp_path / "rows.npz"
    np.savez(data, input=IRIS_X)
    report = convert(tmp_path / "lgb" / "1", data)
    assert report.check.ok
    assert served(tmp_path / "lgb" / "2")[1:] == (
        TensorSpec("probabilities", "FP64", (-1, 3)),
        TensorSpec("label", "INT64", (-1, 1)),
    )


def test_pytorch_torchscript_with_its_config(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    torch.jit.script(module.eval()).save(str(add_version(tmp_path, "script") / "model.pt"))
    (tmp_path / "script" / "config.yaml").write_text(
        "max_batch_size: 16\n"
        "input:\n- {name: INPUT__0, data_type: TYPE_FP32, dims: [4]}\n"
        "output:\n- {name: OUTPUT__0, data_type: TYPE_FP32, dims: [3]}\n"
    )
    report = convert(tmp_path / "script" / "1")
    assert report.check.ok
    assert report.check.synthetic
    assert served(tmp_path / "script" / "2") == (
        TensorSpec("INPUT__0", "FP32", (-1, 4)),
        TensorSpec("OUTPUT__0", "FP32", (-1, 3)),
    )
