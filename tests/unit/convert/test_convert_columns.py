"""Converting scikit-learn pipelines fitted on DataFrames: one ONNX input per column.

String columns become ONNX string inputs, numbers keep their served types,
and a step skl2onnx cannot convert is named with its class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from modelport.config.model import parse_model_config
from modelport.dataplane.runtime.onnx import load_onnx
from modelport.optimize.convert.command import ConvertOptions, convert_version
from modelport.optimize.convert.converters import _sklearn_steps
from modelport.optimize.convert.errors import ConversionFailed

FRAME = pd.DataFrame(
    {
        "age": [22.0, 35.0, 58.0, 41.0, 29.0, 63.0, 47.0, 33.0, 51.0, 26.0],
        "city": ["Oslo", "Lima", "Oslo", "Kyiv", "Lima", "Kyiv", "Oslo", "Lima", "Kyiv", "Oslo"],
        "member": [True, False, True, True, False, False, True, False, True, False],
    }
)
TARGET = np.array([0, 1, 0, 1, 1, 0, 1, 0, 1, 0])


def fitted(numeric: Any) -> Pipeline:
    prep = ColumnTransformer(
        [
            ("num", numeric, ["age"]),
            # Unknown categories are refused: made-up rows must use known ones.
            ("city", OneHotEncoder(), ["city"]),
            ("flag", OneHotEncoder(), ["member"]),
        ]
    )
    return Pipeline([("prep", prep), ("clf", LogisticRegression())]).fit(FRAME, TARGET)


def repository(tmp_path: Path, model: Pipeline) -> Path:
    version = tmp_path / "repo" / "people" / "1"
    version.mkdir(parents=True)
    sio.dump(model, version / "model.skops")
    return version


def test_columns_become_typed_onnx_inputs(tmp_path: Path) -> None:
    model = fitted(StandardScaler())
    source = repository(tmp_path, model)
    report = convert_version(ConvertOptions(path=source, seconds=0))
    assert report.check.synthetic
    assert [(s.name, s.datatype, s.shape) for s in report.signature.inputs] == [
        ("age", "FP64", (-1, 1)),
        ("city", "BYTES", (-1, 1)),
        ("member", "BOOL", (-1, 1)),
    ]
    config = parse_model_config(
        {"name": "people", **_yaml(report.version_dir / "config.yaml")}, "config.yaml"
    )
    onnx = load_onnx(report.version_dir, config, 1)
    assert onnx.native.inputs == report.signature.inputs
    batch = {
        "age": FRAME["age"].to_numpy().reshape(-1, 1),
        "city": np.array([[c.encode()] for c in FRAME["city"]], dtype=object),
        "member": FRAME["member"].to_numpy().reshape(-1, 1),
    }
    got = onnx.predict(batch, ["label", "probabilities"])
    np.testing.assert_array_equal(got["label"][:, 0], model.predict(FRAME))
    np.testing.assert_allclose(got["probabilities"], model.predict_proba(FRAME), atol=1e-6)


def test_a_step_without_a_converter_is_named(tmp_path: Path) -> None:
    numeric = make_pipeline(FunctionTransformer(np.log1p), StandardScaler())
    source = repository(tmp_path, fitted(numeric))
    with pytest.raises(ConversionFailed) as info:
        convert_version(ConvertOptions(path=source, seconds=0))
    message = info.value.message
    assert message.startswith(
        "skl2onnx could not convert step 'prep' (ColumnTransformer) > transformer 'num' "
        "(Pipeline) > step 'functiontransformer' (FunctionTransformer)"
    ), message
    assert not (source.parent / "2").exists()


def test_steps_are_listed_outermost_first() -> None:
    model = fitted(StandardScaler())
    assert [where for where, _ in _sklearn_steps(model)] == [
        "step 'prep' (ColumnTransformer)",
        "step 'prep' (ColumnTransformer) > transformer 'num' (StandardScaler)",
        "step 'prep' (ColumnTransformer) > transformer 'city' (OneHotEncoder)",
        "step 'prep' (ColumnTransformer) > transformer 'flag' (OneHotEncoder)",
        "step 'clf' (LogisticRegression)",
    ]


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data
