"""DataFrame models served one input per column: the frame, the request check, the signature.

Covers runtime/columns.py (named arrays → DataFrame), the request check's
MLServer forms (``[N]`` columns, content_type ``pd``), and the scikit-learn
runtime's column signature inferred from a fitted ColumnTransformer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from modelport.config.model import ModelConfig, parse_model_config
from modelport.controlplane.repository.autoconfig import complete_config, signature_of
from modelport.dataplane.runtime.columns import Column, Columns, decode_text
from modelport.dataplane.runtime.sklearn import SklearnRuntime, column_types, load_sklearn
from modelport.dataplane.table import ModelVersion
from modelport.dataplane.validate import check_request
from modelport.errors import InvalidRequest, ModelLoadError
from modelport.observability.statistics import ModelStatistics
from modelport.types import InferenceRequest, ModelSignature, Tensor, TensorSpec

FRAME = pd.DataFrame(
    {
        "age": [22.0, 35.0, 58.0, 41.0, 29.0, 63.0, 47.0, 33.0],
        "visits": [1, 4, 2, 8, 3, 5, 7, 2],
        "city": ["Oslo", "Lima", "Oslo", "Kyiv", "Lima", "Kyiv", "Oslo", "Lima"],
        "member": [True, False, True, True, False, False, True, False],
    }
)
TARGET = np.array([0, 1, 0, 1, 1, 0, 1, 0])


def config(**fields: Any) -> ModelConfig:
    return parse_model_config({"name": "m", **fields}, "config.yaml")


def pipeline() -> Pipeline:
    prep = ColumnTransformer(
        [
            ("num", StandardScaler(), ["age", "visits"]),
            ("city", OneHotEncoder(handle_unknown="ignore"), ["city"]),
            ("flag", OneHotEncoder(), ["member"]),
        ]
    )
    return Pipeline([("prep", prep), ("clf", LogisticRegression())]).fit(FRAME, TARGET)


def load(model: Any, tmp_path: Path, cfg: ModelConfig | None = None) -> SklearnRuntime:
    sio.dump(model, tmp_path / "model.skops")
    return load_sklearn(tmp_path, cfg or config(), 1)


def wire(frame: pd.DataFrame, flat: bool = False) -> dict[str, np.ndarray[Any, Any]]:
    """The DataFrame as MLServer's pandas codec sends it: one array per column, str as bytes."""
    out: dict[str, np.ndarray[Any, Any]] = {}
    for name in frame.columns:
        values = frame[name].to_numpy()
        if values.dtype.kind in "OU" or isinstance(frame[name].dtype, pd.StringDtype):
            values = np.array([str(v).encode() for v in frame[name]], dtype=object)
        out[str(name)] = values if flat else values.reshape(-1, 1)
    return out


# ------------------------------------------------------------------ columns → DataFrame


def test_frame_has_the_declared_dtypes() -> None:
    columns = Columns(
        [
            Column("age", "age", "FP64"),
            Column("visits", "visits", "INT64"),
            Column("city", "city", "BYTES"),
            Column("member", "member", "BOOL"),
            Column("score", "score", "FP32", np.dtype(np.float64)),
        ]
    )
    frame = columns.frame(
        {
            "age": np.array([[1.5], [2.5]]),
            "visits": np.array([3, 4]),  # [N] as well as [N, 1]
            "city": np.array([[b"Oslo"], ["Zürich".encode()]], dtype=object),
            "member": np.array([[True], [False]]),
            "score": np.array([[0.5], [0.25]], dtype=np.float32),
        }
    )
    assert list(frame.columns) == ["age", "visits", "city", "member", "score"]
    assert frame.dtypes.to_dict() == {
        "age": np.float64,
        "visits": np.int64,
        "city": object,
        "member": bool,
        "score": np.float64,
    }
    assert frame["city"].tolist() == ["Oslo", "Zürich"]
    assert all(type(v) is str for v in frame["city"])


def test_frame_refuses_what_a_column_cannot_hold() -> None:
    columns = Columns([Column("a", "a", "FP64"), Column("b", "b", "BYTES")])
    ok = np.array([[1.0], [2.0]])
    with pytest.raises(InvalidRequest, match=r"missing input 'b'"):
        columns.frame({"a": ok})
    with pytest.raises(InvalidRequest, match=r"'b' has 1 rows, but the other columns have 2"):
        columns.frame({"a": ok, "b": np.array([[b"x"]], dtype=object)})
    with pytest.raises(InvalidRequest, match=r"'a' has shape \[2, 2\]; a column takes one value"):
        columns.frame({"a": np.zeros((2, 2)), "b": np.array([b"x", b"y"], dtype=object)})
    with pytest.raises(InvalidRequest, match=r"'b': BYTES element 1 is not valid UTF-8"):
        columns.frame({"a": ok, "b": np.array([b"x", b"\xff"], dtype=object)})


def test_decode_text_keeps_str_and_empty_columns() -> None:
    mixed = np.array([b"a", "b", b""], dtype=object)
    assert decode_text("t", mixed).tolist() == ["a", "b", ""]
    empty = decode_text("t", np.empty(0, dtype=object))
    assert empty.dtype == object and empty.shape == (0,)
    with pytest.raises(InvalidRequest, match="element 0 is not text"):
        decode_text("t", np.array([3], dtype=object))


# ------------------------------------------------------------------ the request check


def _version(signature: ModelSignature) -> ModelVersion:
    return ModelVersion(
        "m",
        "1",
        "fake",
        signature,
        config(),
        None,
        ModelStatistics(),  # type: ignore[arg-type]
    )


COLUMN_MODEL = ModelSignature(
    inputs=(TensorSpec("age", "FP64", (-1, 1)), TensorSpec("city", "BYTES", (-1, 1))),
    outputs=(TensorSpec("label", "INT64", (-1, 1)),),
    max_batch_size=8,
)


def _tensor(name: str, datatype: str, array: np.ndarray[Any, Any]) -> Tensor:
    return Tensor(name, datatype, tuple(array.shape), array)


def test_rank_one_columns_are_made_n_by_1() -> None:
    request = InferenceRequest(
        "m",
        None,
        [
            _tensor("age", "FP64", np.array([1.0, 2.0, 3.0])),
            _tensor("city", "BYTES", np.array([b"a", b"b", b"c"], dtype=object)),
        ],
    )
    assert check_request(_version(COLUMN_MODEL), request) == 3
    assert [t.shape for t in request.inputs] == [(3, 1), (3, 1)]
    assert request.inputs[0].data.shape == (3, 1)


def test_pandas_requests_may_send_integers_for_float_columns() -> None:
    def request(params: dict[str, Any], array: np.ndarray[Any, Any]) -> InferenceRequest:
        city = _tensor("city", "BYTES", np.array([[b"a"], [b"b"]], dtype=object))
        city.parameters = {"content_type": "str"}
        return InferenceRequest(
            "m", None, [_tensor("age", "INT64", array), city], parameters=params
        )

    ints = np.array([[31], [45]], dtype=np.int64)
    with pytest.raises(InvalidRequest, match="'age' has datatype INT64, expected FP64"):
        check_request(_version(COLUMN_MODEL), request({}, ints))
    marked = request({"content_type": "pd"}, ints)
    assert check_request(_version(COLUMN_MODEL), marked) == 2
    assert marked.inputs[0].datatype == "FP64"
    assert marked.inputs[0].data.dtype == np.float64
    # BYTES is never numbers, whatever the marking.
    bad = request({"content_type": "pd"}, np.array([[b"x"], [b"y"]], dtype=object))
    bad.inputs[0].datatype = "BYTES"
    with pytest.raises(InvalidRequest, match="'age' has datatype BYTES, expected FP64"):
        check_request(_version(COLUMN_MODEL), bad)


def test_a_missing_column_is_named() -> None:
    request = InferenceRequest("m", None, [_tensor("age", "FP64", np.array([[1.0]]))])
    with pytest.raises(InvalidRequest, match="missing input 'city'"):
        check_request(_version(COLUMN_MODEL), request)


# ------------------------------------------------------------------ scikit-learn signature


def test_column_transformer_tells_each_column_type(tmp_path: Path) -> None:
    model = pipeline()
    rt = load(model, tmp_path)
    assert rt.native.inputs == (
        TensorSpec("age", "FP64", (-1, 1)),
        TensorSpec("visits", "FP64", (-1, 1)),
        TensorSpec("city", "BYTES", (-1, 1)),
        TensorSpec("member", "BOOL", (-1, 1)),
    )
    assert rt.columns is not None
    done = complete_config(config(), rt.native, "config.yaml")
    assert [(i.name, i.data_type, i.dims) for i in done.input] == [
        ("age", "TYPE_FP64", [1]),
        ("visits", "TYPE_FP64", [1]),
        ("city", "TYPE_STRING", [1]),
        ("member", "TYPE_BOOL", [1]),
    ]
    assert signature_of(done).inputs[2] == TensorSpec("city", "BYTES", (-1, 1))
    sent = wire(FRAME.astype({"visits": np.float64}))
    got = rt.predict(sent, ["label", "probabilities"])
    np.testing.assert_array_equal(got["label"][:, 0], model.predict(FRAME))
    np.testing.assert_allclose(got["probabilities"], model.predict_proba(FRAME), atol=1e-6)


def test_nested_pipelines_imputers_and_text(tmp_path: Path) -> None:
    frame = FRAME.assign(note=["good", "bad", "good day", "bad day", "ok", "fine", "good", "ok"])
    prep = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["age"]),
            (
                "cat",
                make_pipeline(SimpleImputer(strategy="most_frequent"), OrdinalEncoder()),
                ["city", "visits"],
            ),
            ("text", TfidfVectorizer(), "note"),
        ],
        remainder="passthrough",
    )
    model = make_pipeline(prep, LinearRegression()).fit(frame, TARGET)
    names = [str(c) for c in frame.columns]
    assert column_types(model, names) == {
        "age": "FP64",
        "city": "BYTES",
        "visits": "INT64",
        "note": "BYTES",
    }
    rt = load(model, tmp_path)
    # "member" goes through passthrough: served as FP64 unless config.yaml says otherwise.
    assert {t.name: t.datatype for t in rt.native.inputs}["member"] == "FP64"


def test_untold_columns_are_logged_with_how_to_declare_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prep = ColumnTransformer([("city", OneHotEncoder(), ["city"])], remainder="passthrough")
    model = make_pipeline(prep, LogisticRegression()).fit(FRAME[["city", "age"]], TARGET)
    with caplog.at_level(logging.WARNING, logger="modelport.runtime.sklearn"):
        load(model, tmp_path)
    (record,) = [r for r in caplog.records if "does not tell" in r.getMessage()]
    assert "column(s) age" in record.getMessage()
    assert "data_type: TYPE_STRING" in record.getMessage()


def test_config_declares_every_column(tmp_path: Path) -> None:
    model = pipeline()
    listed = [
        {"name": "age", "data_type": "TYPE_FP32", "dims": [1]},
        {"name": "visits", "data_type": "TYPE_INT64", "dims": [1]},
        {"name": "city", "data_type": "TYPE_STRING", "dims": [1]},
        {"name": "member", "data_type": "TYPE_BOOL", "dims": [1]},
    ]
    rt = load(model, tmp_path, config(input=listed))
    assert [t.datatype for t in rt.native.inputs] == ["FP32", "INT64", "BYTES", "BOOL"]
    sent = wire(FRAME)
    sent["age"] = sent["age"].astype(np.float32)
    np.testing.assert_array_equal(rt.predict(sent, ["label"])["label"][:, 0], model.predict(FRAME))
    with pytest.raises(ModelLoadError, match=r"lists 1 of the model's 4 columns.*visits, city"):
        load(model, tmp_path, config(input=listed[:1]))
    with pytest.raises(ModelLoadError, match=r"'age' is a column of the model's DataFrame: dims"):
        load(model, tmp_path, config(input=[{**listed[0], "dims": [3]}, *listed[1:]]))


def test_models_fitted_without_names_keep_the_matrix(tmp_path: Path) -> None:
    x = FRAME[["age", "visits"]].to_numpy(dtype=np.float64)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, TARGET)
    rt = load(model, tmp_path)
    assert rt.columns is None
    assert rt.native.inputs == (TensorSpec("input", "FP32", (-1, 2)),)
    got = rt.predict({"input": x.astype(np.float32)}, ["label"])["label"]
    np.testing.assert_array_equal(got[:, 0], model.predict(x.astype(np.float32)))


def test_a_numeric_dataframe_model_takes_columns_or_a_declared_matrix(tmp_path: Path) -> None:
    numeric = FRAME[["age", "visits"]].astype(np.float64)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(numeric, TARGET)
    rt = load(model, tmp_path)
    assert rt.native.inputs == (
        TensorSpec("age", "FP64", (-1, 1)),
        TensorSpec("visits", "FP64", (-1, 1)),
    )
    np.testing.assert_array_equal(
        rt.predict(wire(numeric, flat=True), ["label"])["label"][:, 0], model.predict(numeric)
    )
    matrix = load(
        model, tmp_path, config(input=[{"name": "x", "data_type": "TYPE_FP64", "dims": [2]}])
    )
    assert matrix.native.inputs == (TensorSpec("x", "FP64", (-1, 2)),)
    got = matrix.predict({"x": numeric.to_numpy()}, ["label"])["label"]
    np.testing.assert_array_equal(got[:, 0], model.predict(numeric))


def test_leading_imputers_hand_columns_on() -> None:
    frame = FRAME[["city", "age"]].astype({"city": object})
    model = make_pipeline(
        SimpleImputer(strategy="most_frequent"), OrdinalEncoder(), LogisticRegression()
    ).fit(frame, TARGET)
    assert column_types(model, ["city", "age"]) == {"city": "BYTES", "age": "FP64"}
    scaled = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression())
    scaled.fit(FRAME[["age", "visits"]], TARGET)
    assert column_types(scaled, ["age", "visits"]) == {"age": "FP64", "visits": "FP64"}
