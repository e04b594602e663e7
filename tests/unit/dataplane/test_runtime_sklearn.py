"""The scikit-learn runtime: safe loading, signature inference, whole-batch predictions."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.cluster import KMeans
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from modelport.config.model import ModelConfig, parse_model_config
from modelport.controlplane.repository.autoconfig import complete_config
from modelport.dataplane.runtime.sklearn import SklearnRuntime, _allowed_type, load_sklearn
from modelport.errors import InvalidRequest, ModelLoadError
from modelport.types import TensorSpec

CANCER_X, CANCER_Y = load_breast_cancer(return_X_y=True)
IRIS_X, IRIS_Y = load_iris(return_X_y=True)
DIABETES_X, DIABETES_Y = load_diabetes(return_X_y=True)


def config(**fields: Any) -> ModelConfig:
    return parse_model_config({"name": "m", **fields}, "config.yaml")


def save_skops(model: Any, tmp_path: Path) -> Path:
    sio.dump(model, tmp_path / "model.skops")
    return tmp_path


def load(tmp_path: Path, cfg: ModelConfig | None = None, instances: int = 1) -> SklearnRuntime:
    return load_sklearn(tmp_path, cfg or config(), instances)


@pytest.fixture(scope="module")
def classifier() -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(
        CANCER_X, CANCER_Y
    )


# ------------------------------------------------------------------ trust


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("sklearn.tree._tree.Tree", True),
        ("sklearn.linear_model._logistic.LogisticRegression", True),
        ("numpy.dtype", True),
        ("numpy.float32", True),
        ("numpy.random.mtrand.RandomState", True),
        ("scipy.sparse._csr.csr_matrix", True),
        ("scipy.sparse._csr.csr_array", True),
        ("builtins.print", False),
        ("posix.system", False),
        ("numpy.sum", False),  # a function, not a type
        ("numpy.load", False),
        ("sklearn.datasets.dump_svmlight_file", False),  # scikit-learn, but a function
        ("scipy.linalg.solve", False),
        ("sklearn.no_such_module.Thing", False),
        ("sklearn.tree._tree.Tree; import os", False),
    ],
)
def test_trusted_types_are_classes_of_sklearn_numpy_scipy(name: str, allowed: bool) -> None:
    assert _allowed_type(name) is allowed


def test_skops_with_a_function_is_refused_naming_file_and_type(tmp_path: Path) -> None:
    # Never fitted or called: the type check refuses it before anything runs.
    save_skops(make_pipeline(FunctionTransformer(os.system), LinearRegression()), tmp_path)
    with pytest.raises(ModelLoadError) as err:
        load(tmp_path)
    assert "model.skops" in err.value.message
    assert "posix.system" in err.value.message


def test_corrupt_skops_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "model.skops").write_bytes(b"not a zip file")
    with pytest.raises(ModelLoadError, match=r"model\.skops: not a loadable skops file"):
        load(tmp_path)


def test_missing_file_names_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model\.skops or model\.pkl or model\.joblib"):
        load(tmp_path)


def test_unfitted_estimator_is_refused(tmp_path: Path) -> None:
    save_skops(LogisticRegression(), tmp_path)
    with pytest.raises(ModelLoadError, match="not a fitted scikit-learn estimator"):
        load(tmp_path)


@pytest.mark.parametrize("filename", ["model.pkl", "model.joblib"])
def test_pickle_needs_the_option(tmp_path: Path, classifier: Pipeline, filename: str) -> None:
    joblib.dump(classifier, tmp_path / filename)
    with pytest.raises(ModelLoadError) as err:
        load(tmp_path)
    assert filename in err.value.message
    assert "modelport: {allow_unsafe_pickle: true}" in err.value.message


@pytest.mark.parametrize("filename", ["model.pkl", "model.joblib"])
def test_pickle_with_the_option_loads_and_warns(
    tmp_path: Path, classifier: Pipeline, filename: str, caplog: pytest.LogCaptureFixture
) -> None:
    joblib.dump(classifier, tmp_path / filename)
    cfg = config(modelport={"allow_unsafe_pickle": True})
    with caplog.at_level(logging.WARNING, logger="modelport.runtime.sklearn"):
        rt = load(tmp_path, cfg)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert filename in warnings[0].getMessage()
    assert "ran code" in warnings[0].getMessage()
    x = CANCER_X[:3].astype(np.float32)
    np.testing.assert_array_equal(
        rt.predict({"input": x}, ["label"])["label"][:, 0], classifier.predict(x)
    )


def test_corrupt_pickle_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match=r"model\.pkl: not a loadable pickle"):
        load(tmp_path, config(modelport={"allow_unsafe_pickle": True}))


# ------------------------------------------------------------------ signature


def test_classifier_signature_and_predictions(tmp_path: Path, classifier: Pipeline) -> None:
    rt = load(save_skops(classifier, tmp_path))
    native = rt.native
    assert native.inputs == (TensorSpec("input", "FP32", (-1, 30)),)
    assert native.outputs == (
        TensorSpec("label", "INT64", (-1, 1)),
        TensorSpec("probabilities", "FP32", (-1, 2)),
    )
    x = CANCER_X[:17].astype(np.float32)
    out = rt.predict({"input": x}, ["label", "probabilities"])
    assert out["label"].dtype == np.int64
    assert out["label"].shape == (17, 1)
    np.testing.assert_array_equal(out["label"][:, 0], classifier.predict(x))
    assert out["probabilities"].dtype == np.float32
    np.testing.assert_allclose(out["probabilities"], classifier.predict_proba(x), atol=1e-6)


def test_autoconfig_from_native_batches(tmp_path: Path, classifier: Pipeline) -> None:
    rt = load(save_skops(classifier, tmp_path))
    done = complete_config(config(), rt.native, "config.yaml")
    assert done.max_batch_size == 64
    assert [(t.name, t.data_type, t.dims) for t in done.input] == [("input", "TYPE_FP32", [30])]
    assert [(t.name, t.data_type, t.dims) for t in done.output] == [
        ("label", "TYPE_INT64", [1]),
        ("probabilities", "TYPE_FP32", [2]),
    ]


class CountingClassifier(LogisticRegression):
    """Counts predict_proba calls (pickled: defined here, not in scikit-learn)."""

    proba_calls = 0

    def predict_proba(self, X: Any) -> Any:
        type(self).proba_calls += 1
        return super().predict_proba(X)


def test_probabilities_computed_only_when_asked(tmp_path: Path) -> None:
    model = CountingClassifier(max_iter=500).fit(IRIS_X, IRIS_Y)
    joblib.dump(model, tmp_path / "model.joblib")
    rt = load(tmp_path, config(modelport={"allow_unsafe_pickle": True}))
    CountingClassifier.proba_calls = 0
    out = rt.predict({"input": IRIS_X[:4].astype(np.float32)}, ["label"])
    assert set(out) == {"label"}
    assert CountingClassifier.proba_calls == 0
    out = rt.predict({"input": IRIS_X[:4].astype(np.float32)}, ["probabilities"])
    assert set(out) == {"probabilities"}
    assert CountingClassifier.proba_calls == 1


def test_string_classes_are_bytes(tmp_path: Path) -> None:
    names = np.array(["setosa", "versicolor", "virginica"])[IRIS_Y]
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(IRIS_X, names)
    rt = load(save_skops(model, tmp_path))
    assert rt.native.outputs[0] == TensorSpec("label", "BYTES", (-1, 1))
    x = IRIS_X[::30].astype(np.float32)
    label = rt.predict({"input": x}, ["label"])["label"]
    assert label.dtype == object
    assert [v.decode() for v in label[:, 0]] == list(model.predict(x))


def test_regressor_single_and_multi_output(tmp_path: Path) -> None:
    model = RandomForestRegressor(n_estimators=5, random_state=0).fit(DIABETES_X, DIABETES_Y)
    rt = load(save_skops(model, tmp_path))
    assert rt.native.outputs == (TensorSpec("predictions", "FP32", (-1, 1)),)
    x = DIABETES_X[:5].astype(np.float32)
    out = rt.predict({"input": x}, ["predictions"])["predictions"]
    assert out.shape == (5, 1)
    np.testing.assert_allclose(out[:, 0], model.predict(x), rtol=1e-6)

    two = LinearRegression().fit(DIABETES_X, np.c_[DIABETES_Y, -DIABETES_Y])
    rt = load(save_skops(two, tmp_path))
    assert rt.native.outputs == (TensorSpec("predictions", "FP32", (-1, 2)),)
    assert rt.predict({"input": x}, ["predictions"])["predictions"].shape == (5, 2)


def test_transform_pipeline(tmp_path: Path) -> None:
    model = Pipeline([("scale", StandardScaler()), ("pca", PCA(4))]).fit(CANCER_X)
    rt = load(save_skops(model, tmp_path), config(modelport={"method": "transform"}))
    assert rt.native.outputs == (TensorSpec("output", "FP32", (-1, 4)),)
    x = CANCER_X[:6].astype(np.float32)
    np.testing.assert_allclose(
        rt.predict({"input": x}, ["output"])["output"], model.transform(x), atol=1e-4
    )
    # A model without predict defaults to transform.
    assert load(tmp_path).native.outputs == (TensorSpec("output", "FP32", (-1, 4)),)


@pytest.mark.parametrize(
    ("method", "outputs"),
    [("predict", ["label"]), ("predict_proba", ["probabilities"])],
)
def test_method_chooses_one_output(
    tmp_path: Path, classifier: Pipeline, method: str, outputs: list[str]
) -> None:
    rt = load(save_skops(classifier, tmp_path), config(modelport={"method": method}))
    assert [t.name for t in rt.native.outputs] == outputs


def test_unknown_or_missing_method_names_the_field(tmp_path: Path, classifier: Pipeline) -> None:
    save_skops(classifier, tmp_path)
    with pytest.raises(ModelLoadError, match=r"model\.skops: modelport\.method: expected one of"):
        load(tmp_path, config(modelport={"method": "decision_function"}))
    save_skops(LinearRegression().fit(DIABETES_X, DIABETES_Y), tmp_path)
    with pytest.raises(
        ModelLoadError, match=r"modelport\.method: the estimator has no predict_proba"
    ):
        load(tmp_path, config(modelport={"method": "predict_proba"}))


def test_single_output_takes_the_configured_name_and_float_type(tmp_path: Path) -> None:
    save_skops(LinearRegression().fit(DIABETES_X, DIABETES_Y), tmp_path)
    cfg = config(
        input=[{"name": "features", "data_type": "TYPE_FP64", "dims": [10]}],
        output=[{"name": "progression", "data_type": "TYPE_FP64", "dims": [1]}],
    )
    rt = load(tmp_path, cfg)
    assert rt.native.inputs == (TensorSpec("features", "FP64", (-1, 10)),)
    assert rt.native.outputs == (TensorSpec("progression", "FP64", (-1, 1)),)
    out = rt.predict({"features": DIABETES_X[:2]}, ["progression"])["progression"]
    assert out.dtype == np.float64
    complete_config(cfg, rt.native, "config.yaml")  # consistent with its own config


def test_two_inputs_are_refused(tmp_path: Path, classifier: Pipeline) -> None:
    save_skops(classifier, tmp_path)
    cfg = config(
        input=[
            {"name": "a", "data_type": "TYPE_FP32", "dims": [15]},
            {"name": "b", "data_type": "TYPE_FP32", "dims": [15]},
        ]
    )
    with pytest.raises(ModelLoadError, match="takes one matrix"):
        load(tmp_path, cfg)


def test_clusterer_labels_are_int64(tmp_path: Path) -> None:
    model = KMeans(n_clusters=3, n_init=2, random_state=0).fit(IRIS_X)
    rt = load(save_skops(model, tmp_path))
    assert rt.native.outputs == (TensorSpec("label", "INT64", (-1, 1)),)


def test_dataframe_fitted_model_as_one_matrix_gets_its_column_names(tmp_path: Path) -> None:
    data = load_iris(as_frame=True)
    model = LogisticRegression(max_iter=500).fit(data.data, data.target)
    # A config listing one input that is not a column keeps the one matrix.
    rt = load(
        save_skops(model, tmp_path),
        config(input=[{"name": "input", "data_type": "TYPE_FP32", "dims": [4]}]),
    )
    assert rt.native.inputs == (TensorSpec("input", "FP32", (-1, 4)),)
    x = data.data.to_numpy(dtype=np.float32)[:5]
    # pytest turns warnings into errors: a missing-feature-names warning would fail here.
    out = rt.predict({"input": x}, ["label"])
    np.testing.assert_array_equal(
        out["label"][:, 0], model.predict(pd.DataFrame(x, columns=data.data.columns))
    )


def test_text_pipeline_takes_bytes(tmp_path: Path) -> None:
    texts = ["good movie", "great film", "bad movie", "awful film", "good great", "bad awful"]
    model = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, [1, 1, 0, 0, 1, 0])
    save_skops(model, tmp_path)
    rt = load(tmp_path, config(input=[{"name": "text", "data_type": "TYPE_STRING", "dims": [1]}]))
    assert rt.native.inputs == (TensorSpec("text", "BYTES", (-1, 1)),)
    x = np.array([[b"good film"], [b"awful movie"]], dtype=object)
    label = rt.predict({"text": x}, ["label"])["label"]
    np.testing.assert_array_equal(label[:, 0], model.predict(["good film", "awful movie"]))
    with pytest.raises(InvalidRequest, match="UTF-8"):
        rt.predict({"text": np.array([[b"\xff"]], dtype=object)}, ["label"])


def test_nan_input_is_a_value_error(tmp_path: Path, classifier: Pipeline) -> None:
    rt = load(save_skops(classifier, tmp_path))
    x = CANCER_X[:1].astype(np.float32)
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):  # the scheduler answers 400
        rt.predict({"input": x}, ["label"])


def test_n_jobs_is_capped_to_the_instance_share(tmp_path: Path) -> None:
    model = RandomForestRegressor(n_estimators=3, n_jobs=-1, random_state=0)
    save_skops(model.fit(DIABETES_X, DIABETES_Y), tmp_path)
    rt = load(tmp_path, instances=1)
    expected = max(1, ((os.cpu_count() or 1) - 1) // 1)
    assert rt._model.n_jobs == expected
    rt = load(tmp_path, config(parameters={"n_jobs": {"string_value": "3"}}))
    assert rt._model.n_jobs == 3
    with pytest.raises(ModelLoadError, match=r"parameters\.n_jobs"):
        load(tmp_path, config(parameters={"n_jobs": {"string_value": "many"}}))


def test_unload_releases_the_model(tmp_path: Path, classifier: Pipeline) -> None:
    rt = load(save_skops(classifier, tmp_path))
    rt.unload()
    assert rt._model is None


def test_object_labels_become_bytes(tmp_path: Path) -> None:
    labels = np.where(DIABETES_Y > 140, "large", "small").astype(object)  # as pandas gives
    model = LogisticRegression(max_iter=1000).fit(DIABETES_X, labels)
    rt = load(save_skops(model, tmp_path))
    assert rt.native.outputs[0] == TensorSpec("label", "BYTES", (-1, 1))
    x = DIABETES_X[:8].astype(np.float32)
    label = rt.predict({"input": x}, ["label"])["label"]
    assert label.dtype == object
    assert [v.decode() for v in label[:, 0]] == list(model.predict(x))


def test_multi_output_classifier_serves_labels(tmp_path: Path) -> None:
    y = np.c_[IRIS_Y, (IRIS_X[:, 0] > 5.8).astype(int)]
    model = RandomForestClassifier(n_estimators=4, random_state=0).fit(IRIS_X, y)
    rt = load(save_skops(model, tmp_path))
    assert rt.native.outputs == (TensorSpec("label", "INT64", (-1, 2)),)
    x = IRIS_X[::25].astype(np.float32)
    np.testing.assert_array_equal(rt.predict({"input": x}, ["label"])["label"], model.predict(x))
    with pytest.raises(ModelLoadError, match="multi-output"):
        load(tmp_path, config(modelport={"method": "predict_proba"}))
