"""The MLflow runtime on models saved here with mlflow.sklearn and mlflow.pyfunc.

Predictions are compared with the same model object's own; signatures with
what autoconfig then makes of them.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

with warnings.catch_warnings():
    # mlflow warns about its own type hints while importing.
    warnings.simplefilter("ignore")
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install modelport[mlflow])")
    import mlflow.pyfunc
    import mlflow.sklearn
    from mlflow.models import infer_signature

from sklearn.datasets import load_diabetes, load_digits, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from modelport.config.model import ModelConfig, parse_model_config
from modelport.controlplane.repository.autoconfig import complete_config
from modelport.dataplane.runtime.mlflow import MlflowRuntime, load_mlflow
from modelport.errors import InvalidRequest, ModelLoadError
from modelport.types import TensorSpec

REQUIREMENTS = ["scikit-learn"]  # given, so mlflow does not start a subprocess to infer them


def quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run an mlflow call with its hints and warnings silenced (pytest turns them into errors)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def config(**fields: Any) -> ModelConfig:
    return parse_model_config({"name": "m", **fields}, "config.yaml")


#: PythonModel objects are saved with cloudpickle, which runs code when loaded.
UNSAFE = parse_model_config({"modelport": {"allow_unsafe_pickle": True}}, "config.yaml")


def load(directory: Path, cfg: ModelConfig | None = None) -> MlflowRuntime:
    return quietly(load_mlflow, directory, cfg or config(), 1)


@pytest.fixture(scope="module")
def iris() -> tuple[pd.DataFrame, np.ndarray[Any, Any]]:
    data = load_iris(as_frame=True)
    return data.data, data.target.to_numpy()


@pytest.fixture(scope="module")
def classifier(iris: tuple[pd.DataFrame, np.ndarray[Any, Any]]) -> LogisticRegression:
    x, y = iris
    return LogisticRegression(max_iter=1000).fit(x, y)


@pytest.fixture(scope="module")
def columns_dir(
    classifier: LogisticRegression,
    iris: tuple[pd.DataFrame, np.ndarray[Any, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """A column-based signature: a DataFrame of four named double columns in, labels out."""
    x, _ = iris
    target = tmp_path_factory.mktemp("columns") / "1"  # must not exist yet
    signature = quietly(infer_signature, x, classifier.predict(x))
    quietly(
        mlflow.sklearn.save_model,
        classifier,
        str(target),
        signature=signature,
        pip_requirements=REQUIREMENTS,
    )
    return target


@pytest.fixture(scope="module")
def tensor_dir(
    iris: tuple[pd.DataFrame, np.ndarray[Any, Any]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, LogisticRegression]:
    """A tensor-based signature: one unnamed float64 [-1, 4] tensor in, probabilities out."""
    x, y = iris
    model = LogisticRegression(max_iter=1000).fit(x.to_numpy(), y)
    target = tmp_path_factory.mktemp("tensor") / "1"
    signature = quietly(infer_signature, x.to_numpy(), model.predict_proba(x.to_numpy()))
    quietly(
        mlflow.sklearn.save_model,
        model,
        str(target),
        signature=signature,
        pyfunc_predict_fn="predict_proba",
        pip_requirements=REQUIREMENTS,
    )
    return target, model


@pytest.fixture(scope="module")
def unsigned_dir(
    iris: tuple[pd.DataFrame, np.ndarray[Any, Any]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, LogisticRegression]:
    x, y = iris
    model = LogisticRegression(max_iter=1000).fit(x.to_numpy(), y)
    target = tmp_path_factory.mktemp("unsigned") / "1"
    quietly(mlflow.sklearn.save_model, model, str(target), pip_requirements=REQUIREMENTS)
    return target, model


def served_rows(x: pd.DataFrame, rows: slice) -> np.ndarray[Any, Any]:
    return x.iloc[rows].to_numpy(dtype=np.float32)


def columns_of(x: pd.DataFrame) -> dict[str, np.ndarray[Any, Any]]:
    """A DataFrame as one [N, 1] array per column, as MLServer's pandas codec sends it."""
    return {str(c): x[c].to_numpy().reshape(-1, 1) for c in x.columns}


# ------------------------------------------------------------ column-based


def test_columns_become_one_input_each(
    columns_dir: Path, iris: tuple[pd.DataFrame, np.ndarray[Any, Any]]
) -> None:
    x, _ = iris
    rt = load(columns_dir)
    assert rt.input_format == "columns"
    assert rt.native.inputs == tuple(TensorSpec(str(c), "FP64", (-1, 1)) for c in x.columns)
    assert rt.native.outputs == (TensorSpec("predictions", "INT64", (-1, 1)),)
    done = complete_config(config(), rt.native, "config.yaml")
    assert done.max_batch_size == 64
    assert [(i.name, i.data_type, i.dims) for i in done.input] == [
        (str(c), "TYPE_FP64", [1]) for c in x.columns
    ]
    assert [(o.name, o.data_type, o.dims) for o in done.output] == [
        ("predictions", "TYPE_INT64", [1])
    ]


def test_columns_predictions_equal_the_model(
    columns_dir: Path,
    classifier: LogisticRegression,
    iris: tuple[pd.DataFrame, np.ndarray[Any, Any]],
) -> None:
    x, _ = iris
    rt = load(columns_dir)
    got = rt.predict(columns_of(x), ["predictions"])["predictions"]
    assert got.shape == (len(x), 1)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got[:, 0], classifier.predict(x))


def test_columns_listed_in_config_are_cast_to_the_schema(
    columns_dir: Path,
    classifier: LogisticRegression,
    iris: tuple[pd.DataFrame, np.ndarray[Any, Any]],
) -> None:
    x, _ = iris
    cfg = config(input=[{"name": str(c), "data_type": "TYPE_FP32", "dims": [1]} for c in x.columns])
    rt = load(columns_dir, cfg)
    assert {t.datatype for t in rt.native.inputs} == {"FP32"}
    batch = {n: a.astype(np.float32) for n, a in columns_of(x).items()}
    got = rt.predict(batch, ["predictions"])["predictions"]
    frame = pd.DataFrame({c: x[c].to_numpy(np.float32).astype(np.float64) for c in x.columns})
    np.testing.assert_array_equal(got[:, 0], classifier.predict(frame))


def test_columns_partly_listed_in_config_are_refused(
    columns_dir: Path, iris: tuple[pd.DataFrame, np.ndarray[Any, Any]]
) -> None:
    x, _ = iris
    first = str(x.columns[0])
    cfg = config(input=[{"name": first, "data_type": "TYPE_FP64", "dims": [1]}])
    with pytest.raises(ModelLoadError, match=r"lists 1 of the model's 4 columns.*missing: "):
        load(columns_dir, cfg)


def test_columns_config_names_and_types(
    columns_dir: Path,
    classifier: LogisticRegression,
    iris: tuple[pd.DataFrame, np.ndarray[Any, Any]],
) -> None:
    x, _ = iris
    cfg = config(
        max_batch_size=16,
        input=[{"name": "features", "data_type": "TYPE_FP64", "dims": [4]}],
        output=[{"name": "label", "data_type": "TYPE_INT32", "dims": [1]}],
    )
    rt = load(columns_dir, cfg)
    assert rt.native.inputs == (TensorSpec("features", "FP64", (-1, 4)),)
    assert rt.native.outputs == (TensorSpec("label", "INT32", (-1, 1)),)
    complete_config(cfg, rt.native, "config.yaml")
    batch = x.iloc[:10].to_numpy()
    got = rt.predict({"features": batch}, ["label"])["label"]
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got[:, 0], classifier.predict(x.iloc[:10]))


def test_columns_cannot_be_served_as_strings(columns_dir: Path) -> None:
    cfg = config(input=[{"name": "input", "data_type": "TYPE_STRING", "dims": [4]}])
    with pytest.raises(ModelLoadError, match=r"MLmodel: input 'input' cannot be BYTES"):
        load(columns_dir, cfg)


def test_integer_columns_as_one_fp32_matrix_are_cast(tmp_path: Path) -> None:
    data = load_digits(as_frame=True)
    x = data.data.astype(np.int64)
    model = DecisionTreeClassifier(max_depth=6, random_state=0).fit(x, data.target)
    target = tmp_path / "1"
    signature = quietly(infer_signature, x, model.predict(x))
    quietly(
        mlflow.sklearn.save_model,
        model,
        str(target),
        signature=signature,
        pip_requirements=REQUIREMENTS,
        skops_trusted_types=["sklearn.tree._tree.Tree"],
    )
    assert load(target).native.inputs == tuple(
        TensorSpec(str(c), "INT64", (-1, 1)) for c in x.columns
    )
    # The one FP32 matrix of earlier releases, kept by listing it in config.yaml.
    rt = load(target, config(input=[{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}]))
    assert rt.native.inputs == (TensorSpec("input", "FP32", (-1, 64)),)
    got = rt.predict({"input": x.to_numpy(dtype=np.float32)}, ["predictions"])["predictions"]
    np.testing.assert_array_equal(got[:, 0], model.predict(x))


def test_regressor_with_column_output(tmp_path: Path) -> None:
    data = load_diabetes(as_frame=True)
    x, y = data.data, data.target
    model = LinearRegression().fit(x, y)
    target = tmp_path / "1"
    signature = quietly(infer_signature, x, pd.Series(model.predict(x), name="progression"))
    quietly(
        mlflow.sklearn.save_model,
        model,
        str(target),
        signature=signature,
        pip_requirements=REQUIREMENTS,
    )
    rt = load(target)
    assert rt.native.outputs == (TensorSpec("predictions", "FP64", (-1, 1)),)
    got = rt.predict(columns_of(x), ["predictions"])["predictions"]
    np.testing.assert_allclose(got[:, 0], model.predict(x), rtol=0, atol=1e-9)


# ------------------------------------------------------------ tensor-based


def test_tensor_schema_is_served_as_it_is(
    tensor_dir: tuple[Path, LogisticRegression], iris: tuple[pd.DataFrame, np.ndarray[Any, Any]]
) -> None:
    directory, model = tensor_dir
    x, _ = iris
    rt = load(directory)
    assert rt.input_format == "tensor"
    assert rt.native.inputs == (TensorSpec("input", "FP64", (-1, 4)),)
    assert rt.native.outputs == (TensorSpec("predictions", "FP64", (-1, 3)),)
    batch = x.to_numpy()[::7]
    got = rt.predict({"input": batch}, ["predictions"])["predictions"]
    np.testing.assert_allclose(got, model.predict_proba(batch), rtol=0, atol=1e-12)


def test_tensor_schema_served_as_fp32_is_widened(
    tensor_dir: tuple[Path, LogisticRegression], iris: tuple[pd.DataFrame, np.ndarray[Any, Any]]
) -> None:
    directory, model = tensor_dir
    x, _ = iris
    cfg = config(
        input=[{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 4]}],
        output=[{"name": "p", "data_type": "TYPE_FP32", "dims": [-1, 3]}],
    )
    rt = load(directory, cfg)
    assert rt.native.inputs == (TensorSpec("x", "FP32", (-1, 4)),)
    batch = x.to_numpy(dtype=np.float32)[:5]
    got = rt.predict({"x": batch}, ["p"])["p"]
    assert got.dtype == np.float32
    want = model.predict_proba(batch.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


class SumDiff(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """Named tensors in and out: a dict of arrays each way."""

    # mlflow derives validation from predict's type hint and warns when it
    # cannot (a dict of arrays) or when there is none; model_input is left
    # unannotated and the check skipped, the signature given at save does that job.
    _skip_type_hint_validation = True

    def predict(self, context: Any, model_input, params: Any = None) -> Any:  # type: ignore[no-untyped-def]
        a, b = model_input["a"], model_input["b"]
        return {"sum": a + b, "diff": (a - b).sum(axis=1)}


def test_named_tensors_are_a_dict(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = rng.random((6, 3))
    b = rng.random((6, 3))
    model = SumDiff()
    example_out = model.predict(None, {"a": a, "b": b})
    signature = quietly(infer_signature, {"a": a, "b": b}, example_out)
    target = tmp_path / "1"
    quietly(
        mlflow.pyfunc.save_model,
        str(target),
        python_model=model,
        signature=signature,
        pip_requirements=[],
    )
    rt = load(target, UNSAFE)
    assert rt.input_format == "dict"
    assert rt.native.inputs == (
        TensorSpec("a", "FP64", (-1, 3)),
        TensorSpec("b", "FP64", (-1, 3)),
    )
    assert {o.name: o for o in rt.native.outputs} == {
        "sum": TensorSpec("sum", "FP64", (-1, 3)),
        "diff": TensorSpec("diff", "FP64", (-1, 1)),
    }
    got = quietly(rt.predict, {"a": a, "b": b}, ["sum", "diff"])
    np.testing.assert_allclose(got["sum"], a + b)
    np.testing.assert_allclose(got["diff"][:, 0], (a - b).sum(axis=1))


class Shout(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """A string column in, a string column out."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        return model_input["text"].str.upper() + "!"


def test_string_columns_are_bytes(tmp_path: Path) -> None:
    examples = pd.DataFrame({"text": ["hello", "wörld"]})
    model = Shout()
    signature = quietly(infer_signature, examples, model.predict(None, examples))
    target = tmp_path / "1"
    quietly(
        mlflow.pyfunc.save_model,
        str(target),
        python_model=model,
        signature=signature,
        pip_requirements=[],
    )
    rt = load(target, UNSAFE)
    assert rt.native.inputs == (TensorSpec("text", "BYTES", (-1, 1)),)
    assert rt.native.outputs == (TensorSpec("predictions", "BYTES", (-1, 1)),)
    batch = np.array([[b"abc"], ["wörld".encode()]], dtype=object)
    got = quietly(rt.predict, {"text": batch}, ["predictions"])["predictions"]
    assert got.tolist() == [[b"ABC!"], ["WÖRLD!".encode()]]
    with pytest.raises(InvalidRequest, match=r"input 'text': BYTES element 1 is not valid UTF-8"):
        rt.predict({"text": np.array([[b"ok"], [b"\xff"]], dtype=object)}, ["predictions"])


# ------------------------------------------------------------ without a signature


def test_unsigned_model_needs_config(unsigned_dir: tuple[Path, LogisticRegression]) -> None:
    directory, _ = unsigned_dir
    with pytest.raises(ModelLoadError, match=r"MLmodel: .*without a signature; config\.yaml must"):
        load(directory)


@pytest.mark.parametrize("input_format", [None, "dataframe"])
def test_unsigned_model_with_config(
    unsigned_dir: tuple[Path, LogisticRegression],
    iris: tuple[pd.DataFrame, np.ndarray[Any, Any]],
    input_format: str | None,
) -> None:
    directory, model = unsigned_dir
    x, _ = iris
    fields: dict[str, Any] = {
        "max_batch_size": 8,
        "input": [{"name": "features", "data_type": "TYPE_FP64", "dims": [4]}],
        "output": [{"name": "label", "data_type": "TYPE_INT64", "dims": [1]}],
    }
    if input_format is not None:
        fields["parameters"] = {"input_format": {"string_value": input_format}}
    rt = load(directory, config(**fields))
    assert rt.input_format == (input_format or "tensor")
    assert rt.native.inputs == (TensorSpec("features", "FP64", (-1, 4)),)
    batch = x.to_numpy()[:8]
    got = rt.predict({"features": batch}, ["label"])["label"]
    assert got.shape == (8, 1)
    np.testing.assert_array_equal(got[:, 0], model.predict(batch))


def test_bad_input_format(unsigned_dir: tuple[Path, LogisticRegression]) -> None:
    directory, _ = unsigned_dir
    cfg = config(parameters={"input_format": {"string_value": "parquet"}})
    with pytest.raises(ModelLoadError, match=r"parameters\.input_format"):
        load(directory, cfg)


# ------------------------------------------------------------ broken models


def test_missing_mlmodel(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"MLmodel: no MLmodel file"):
        load(tmp_path)


def test_missing_flavour_package_is_named(columns_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "1"
    shutil.copytree(columns_dir, broken)
    mlmodel = broken / "MLmodel"
    text = mlmodel.read_text().replace("loader_module: mlflow.sklearn", "loader_module: nopkg.sub")
    mlmodel.write_text(text)
    with pytest.raises(ModelLoadError, match=r"MLmodel: .*needs the 'nopkg' package"):
        load(broken)


def test_corrupt_model_names_the_file(columns_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "1"
    shutil.copytree(columns_dir, broken)
    for f in broken.iterdir():
        if f.name.startswith("model."):
            f.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match=r"1/MLmodel: not a loadable MLflow model"):
        load(broken)


def test_pickled_models_need_the_flag(
    classifier: LogisticRegression,
    iris: tuple[pd.DataFrame, np.ndarray[Any, Any]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    x, _ = iris
    target = tmp_path / "1"
    quietly(
        mlflow.sklearn.save_model,
        classifier,
        str(target),
        signature=quietly(infer_signature, x, classifier.predict(x)),
        serialization_format="cloudpickle",
        pip_requirements=REQUIREMENTS,
    )
    with pytest.raises(ModelLoadError, match=r"1/MLmodel: its scikit-learn model .* cloudpickle"):
        load(target)
    with caplog.at_level(logging.WARNING, logger="modelport.runtime.mlflow"):
        rt = load(target, UNSAFE)
    assert any("ran code from a pickle" in r.getMessage() for r in caplog.records)
    got = rt.predict(columns_of(x.iloc[:5]), ["predictions"])
    np.testing.assert_array_equal(got["predictions"][:, 0], classifier.predict(x.iloc[:5]))


def test_python_model_pickle_is_refused_without_the_flag(tmp_path: Path) -> None:
    examples = pd.DataFrame({"text": ["a"]})
    target = tmp_path / "1"
    quietly(
        mlflow.pyfunc.save_model,
        str(target),
        python_model=Shout(),
        signature=quietly(infer_signature, examples, Shout().predict(None, examples)),
        pip_requirements=[],
    )
    with pytest.raises(
        ModelLoadError, match=r"python_model \(python_model\.pkl\) is a cloudpickle"
    ):
        load(target)


def test_unreadable_mlmodel(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text("flavors: [unclosed")
    with pytest.raises(ModelLoadError, match=r"MLmodel: not a readable MLmodel file"):
        load(tmp_path)


def test_unload(columns_dir: Path) -> None:
    rt = load(columns_dir)
    rt.unload()
    with pytest.raises(RuntimeError, match="unloaded"):
        rt.predict({"input": np.zeros((1, 4), np.float64)}, ["predictions"])
