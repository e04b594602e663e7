"""Converting scikit-learn versions: what is written, what is refused; refusals write nothing.

Models are trained here on scikit-learn's bundled data sets and saved as
users save them, in a repository laid out as the server reads it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import joblib
import numpy as np
import pytest
import skops.io as sio
import yaml
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from modelport.config.model import parse_model_config
from modelport.controlplane.repository.autoconfig import complete_config
from modelport.dataplane.runtime.onnx import load_onnx
from modelport.errors import ModelLoadError
from modelport.optimize.convert import converters
from modelport.optimize.convert.command import ConvertOptions, convert_version
from modelport.optimize.convert.errors import AnswersDiffer, ConversionFailed

CANCER_X, CANCER_Y = load_breast_cancer(return_X_y=True)
IRIS_X, IRIS_Y = load_iris(return_X_y=True)


@pytest.fixture(scope="module")
def cancer_model() -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(
        CANCER_X, CANCER_Y
    )


def add_version(repo: Path, name: str, version: int = 1) -> Path:
    path = repo / name / str(version)
    path.mkdir(parents=True)
    return path


@pytest.fixture
def repo(tmp_path: Path, cancer_model: Pipeline) -> Path:
    """``REPO/cancer/1/model.skops`` and no config.yaml, as users often start."""
    root = tmp_path / "repo"
    sio.dump(cancer_model, add_version(root, "cancer") / "model.skops")
    return root


def entries(model_dir: Path) -> list[str]:
    """Everything in a model directory, hidden staging directories included."""
    return sorted(p.name for p in model_dir.iterdir())


def convert(path: Path, **options: Any) -> Any:
    options.setdefault("seconds", 0)
    return convert_version(ConvertOptions(path=path, **options))


# ------------------------------------------------------------------ success


def test_a_new_version_holds_the_onnx_model_and_the_source_signature(repo: Path) -> None:
    report = convert(repo / "cancer" / "1")
    assert report.version == 2
    assert entries(repo / "cancer") == ["1", "2"]
    assert sorted(p.name for p in (repo / "cancer" / "2").iterdir()) == [
        "config.yaml",
        "model.onnx",
    ]
    written = yaml.safe_load((repo / "cancer" / "2" / "config.yaml").read_text())
    assert written == {
        "backend": "onnxruntime",
        "max_batch_size": 64,
        "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [30]}],
        "output": [
            {"name": "label", "data_type": "TYPE_INT64", "dims": [1]},
            {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [2]},
        ],
    }
    # The server's own load and config check accept the new version as written.
    config = parse_model_config(written, "config.yaml")
    runtime = load_onnx(repo / "cancer" / "2", config, 1)
    complete_config(config, runtime.native, "config.yaml")
    out = runtime.predict({"input": CANCER_X[:3].astype(np.float32)}, ["label"])
    assert out["label"].shape == (3, 1)
    runtime.unload()
    assert report.check.ok
    assert report.check.synthetic
    assert report.original_speed is None
    assert any("serves version(s) 2" in note for note in report.notes)


def test_answers_are_checked_on_the_rows_of_a_data_file(repo: Path, tmp_path: Path) -> None:
    data = tmp_path / "rows.npz"
    np.savez(data, input=CANCER_X[:40])
    report = convert(repo / "cancer" / "1", data=data)
    assert not report.check.synthetic
    assert report.check.rows == 40
    assert {o.name: o.exact for o in report.check.outputs} == {
        "label": True,
        "probabilities": False,
    }


def test_timing_reports_both_models(repo: Path) -> None:
    report = convert(repo / "cancer" / "1", seconds=0.01)
    for speed in (report.original_speed, report.onnx_speed):
        assert speed is not None
        assert speed.batch == 64
        assert speed.latency_calls >= 1 and speed.rows_per_s > 0


def test_an_explicit_output_version_and_existing_versions(repo: Path) -> None:
    assert convert(repo / "cancer" / "1", output_version=7).version == 7
    assert convert(repo / "cancer" / "1").version == 8
    with pytest.raises(ConversionFailed, match=r"cancer/7: already exists"):
        convert(repo / "cancer" / "1", output_version=7)
    with pytest.raises(ConversionFailed, match="--output-version: must be a positive integer"):
        convert(repo / "cancer" / "1", output_version=0)
    assert entries(repo / "cancer") == ["1", "7", "8"]


def test_named_typed_inputs_text_labels_and_a_pickle(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    names = np.array(["setosa", "versicolor", "virginica"])
    iris = LogisticRegression(max_iter=1000).fit(IRIS_X, names[IRIS_Y])
    joblib.dump(iris, add_version(root, "iris") / "model.joblib")
    (root / "iris" / "config.yaml").write_text(
        "modelport: {allow_unsafe_pickle: true}\n"
        "input:\n- {name: measurements, data_type: TYPE_FP64, dims: [4]}\n"
    )
    report = convert(root / "iris" / "1")
    assert report.check.ok
    written = yaml.safe_load((root / "iris" / "2" / "config.yaml").read_text())
    assert written["input"] == [{"name": "measurements", "data_type": "TYPE_FP64", "dims": [4]}]
    assert written["output"][0] == {"name": "label", "data_type": "TYPE_STRING", "dims": [1]}


def test_a_chosen_method_renamed_output(tmp_path: Path, cancer_model: Pipeline) -> None:
    root = tmp_path / "repo"
    sio.dump(cancer_model, add_version(root, "proba") / "model.skops")
    (root / "proba" / "config.yaml").write_text(
        "modelport: {method: predict_proba}\n"
        "output:\n- {name: scores, data_type: TYPE_FP64, dims: [2]}\n"
    )
    report = convert(root / "proba" / "1")
    assert [(o.name, o.datatype) for o in report.check.outputs] == [("scores", "FP64")]


def test_a_model_config_that_pins_the_backend_gets_a_note(repo: Path) -> None:
    (repo / "cancer" / "config.yaml").write_text("backend: sklearn\n")
    report = convert(repo / "cancer" / "1")
    assert any("sets backend 'sklearn'" in note for note in report.notes)


# ------------------------------------------------------------------ answers differ


def test_different_answers_fail_and_write_nothing(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A converter that converts another model: labels the other way round.
    other = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    other.fit(CANCER_X, 1 - CANCER_Y)

    def wrong(source: Any, opset: int | None) -> Any:
        decoy = dataclasses.replace(source, runtime=SimpleNamespace(estimator=other))
        return converters.convert_sklearn(decoy, opset)

    monkeypatch.setitem(converters.CONVERTERS, "sklearn", wrong)
    with pytest.raises(AnswersDiffer) as err:
        convert(repo / "cancer" / "1")
    assert "output 'label' must match exactly" in err.value.message
    assert "output 'probabilities': max abs diff" in err.value.message
    assert " at row " in err.value.message
    assert not err.value.check.ok
    assert entries(repo / "cancer") == ["1"]


# ------------------------------------------------------------------ refusals


def test_paths_that_are_not_version_directories(repo: Path) -> None:
    with pytest.raises(ConversionFailed, match="no such directory"):
        convert(repo / "cancer" / "9")
    with pytest.raises(ConversionFailed, match="must be a positive integer"):
        convert(repo / "cancer")
    with pytest.raises(ConversionFailed, match="not a directory"):
        convert(repo / "cancer" / "1" / "model.skops")
    (repo / "bad name!" / "1").mkdir(parents=True)
    with pytest.raises(ConversionFailed, match="model name 'bad name!' is not allowed"):
        convert(repo / "bad name!" / "1")


@pytest.mark.parametrize(
    ("filename", "backend", "reason"),
    [
        ("model.onnx", "onnxruntime", "already ONNX"),
        ("model.py", "python", "arbitrary Python code"),
        ("MLmodel", "mlflow", "MLflow flavour"),
    ],
)
def test_backends_that_cannot_be_converted(
    tmp_path: Path, filename: str, backend: str, reason: str
) -> None:
    (add_version(tmp_path, "m") / filename).write_text("whatever\n")
    with pytest.raises(ConversionFailed, match=f"backend '{backend}' .*{reason}"):
        convert(tmp_path / "m" / "1")
    assert entries(tmp_path / "m") == ["1"]


def test_a_model_file_that_fails_to_load(tmp_path: Path) -> None:
    (add_version(tmp_path, "m") / "model.skops").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelLoadError, match=r"m/1/model.skops: not a loadable skops file"):
        convert(tmp_path / "m" / "1")
    assert entries(tmp_path / "m") == ["1"]


def test_a_data_file_that_does_not_fit(repo: Path, tmp_path: Path) -> None:
    data = tmp_path / "rows.npz"
    np.savez(data, features=CANCER_X[:5])
    with pytest.raises(ConversionFailed, match=r"no array for input 'input'.*'features'"):
        convert(repo / "cancer" / "1", data=data)
    np.savez(data, input=CANCER_X[:5, :10])
    with pytest.raises(ConversionFailed, match=r"shape \[5, 10\].*\[-1, 30\]"):
        convert(repo / "cancer" / "1", data=data)
    assert entries(repo / "cancer") == ["1"]


def test_a_missing_converter_library_names_the_extra(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def without_skl2onnx(name: str, *args: Any) -> Any:
        return None if name == "skl2onnx" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_skl2onnx)
    with pytest.raises(ConversionFailed) as err:
        convert(repo / "cancer" / "1")
    assert "'skl2onnx'" in err.value.message
    assert "pip install 'modelport[convert]'" in err.value.message


def test_bad_tolerances_and_opset(repo: Path) -> None:
    with pytest.raises(ConversionFailed, match="--rtol: must be a finite number >= 0"):
        convert(repo / "cancer" / "1", rtol=-1.0)
    with pytest.raises(ConversionFailed, match="--atol"):
        convert(repo / "cancer" / "1", atol=float("nan"))
    with pytest.raises(ConversionFailed, match="--opset: must be a positive integer"):
        convert(repo / "cancer" / "1", opset=0)


def test_an_opset_the_converter_cannot_target_is_a_conversion_error(repo: Path) -> None:
    with pytest.raises(ConversionFailed, match="skl2onnx could not convert the model"):
        convert(repo / "cancer" / "1", opset=1000)
    assert entries(repo / "cancer") == ["1"]
