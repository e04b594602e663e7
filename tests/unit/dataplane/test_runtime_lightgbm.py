"""The LightGBM runtime: text-model loading, signature from the objective, whole batches.

Models are trained here on scikit-learn's bundled data sets and saved the way
users save them (``booster_.save_model("model.txt")``). Features are float32
from the start, so the float32 wire carries exactly the values the framework
is given, and the answers can be compared value for value.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from modelport.config.model import ModelConfig, parse_model_config
from modelport.controlplane.repository.autoconfig import complete_config
from modelport.dataplane.runtime import backend_for, runtime_loader
from modelport.dataplane.runtime.lightgbm import LightGBMRuntime, load_lightgbm
from modelport.errors import InvalidRequest, ModelLoadError
from modelport.types import TensorSpec

CANCER_X, CANCER_Y = load_breast_cancer(return_X_y=True)
IRIS_X, IRIS_Y = load_iris(return_X_y=True)
DIABETES_X, DIABETES_Y = load_diabetes(return_X_y=True)
CANCER_X = CANCER_X.astype(np.float32)
IRIS_X = IRIS_X.astype(np.float32)
DIABETES_X = DIABETES_X.astype(np.float32)


def config(**fields: Any) -> ModelConfig:
    return parse_model_config({"name": "m", **fields}, "config.yaml")


def save(model: Any, directory: Path, filename: str = "model.txt") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.booster_.save_model(str(directory / filename))
    return directory


def load(directory: Path, cfg: ModelConfig | None = None, instances: int = 1) -> LightGBMRuntime:
    return load_lightgbm(directory, cfg or config(), instances)


@pytest.fixture(scope="module")
def binary() -> lgb.LGBMClassifier:
    return lgb.LGBMClassifier(n_estimators=20, verbose=-1).fit(CANCER_X, CANCER_Y)


@pytest.fixture(scope="module")
def multiclass() -> lgb.LGBMClassifier:
    return lgb.LGBMClassifier(n_estimators=10, verbose=-1).fit(IRIS_X, IRIS_Y)


@pytest.fixture(scope="module")
def regressor() -> lgb.LGBMRegressor:
    return lgb.LGBMRegressor(n_estimators=20, verbose=-1).fit(DIABETES_X, DIABETES_Y)


@pytest.fixture(scope="module")
def model_text(binary: lgb.LGBMClassifier) -> bytes:
    text: str = binary.booster_.model_to_string()
    return text.encode()


# ------------------------------------------------------------------ selection


def test_model_txt_picks_this_backend(tmp_path: Path) -> None:
    (tmp_path / "model.txt").write_text("tree\n")
    assert backend_for(tmp_path) == "lightgbm"
    assert runtime_loader("lightgbm") is load_lightgbm


# ------------------------------------------------------------------ signature and values


def test_binary_classifier_gives_probabilities_and_labels(
    binary: lgb.LGBMClassifier, tmp_path: Path
) -> None:
    runtime = load(save(binary, tmp_path))
    assert runtime.native.inputs == (TensorSpec("input", "FP32", (-1, 30)),)
    assert runtime.native.outputs == (
        TensorSpec("probabilities", "FP64", (-1, 2)),
        TensorSpec("label", "INT64", (-1, 1)),
    )
    out = runtime.predict({"input": CANCER_X}, ["probabilities", "label"])
    assert out["label"].dtype == np.int64
    np.testing.assert_array_equal(out["probabilities"], binary.predict_proba(CANCER_X))
    np.testing.assert_array_equal(out["label"][:, 0], binary.predict(CANCER_X))


@pytest.mark.parametrize("objective", ["multiclass", "multiclassova"])
def test_multiclass_gives_k_probabilities(tmp_path: Path, objective: str) -> None:
    model = lgb.LGBMClassifier(n_estimators=10, objective=objective, verbose=-1)
    model.fit(IRIS_X, IRIS_Y)
    runtime = load(save(model, tmp_path))
    assert runtime.native.outputs == (
        TensorSpec("probabilities", "FP64", (-1, 3)),
        TensorSpec("label", "INT64", (-1, 1)),
    )
    out = runtime.predict({"input": IRIS_X}, ["label", "probabilities"])
    np.testing.assert_array_equal(out["probabilities"], model.predict_proba(IRIS_X))
    np.testing.assert_array_equal(out["label"][:, 0], model.predict(IRIS_X))


def test_regressor_gives_predictions(regressor: lgb.LGBMRegressor, tmp_path: Path) -> None:
    runtime = load(save(regressor, tmp_path))
    assert runtime.native.outputs == (TensorSpec("predictions", "FP64", (-1, 1)),)
    out = runtime.predict({"input": DIABETES_X}, ["predictions"])
    assert out["predictions"].shape == (len(DIABETES_X), 1)
    np.testing.assert_array_equal(out["predictions"][:, 0], regressor.predict(DIABETES_X))


@pytest.mark.parametrize(
    "params",
    [
        {"objective": "quantile", "alpha": 0.9},
        {"objective": "poisson"},
        {"linear_tree": True},
        {"boosting_type": "rf", "bagging_freq": 1, "bagging_fraction": 0.8},
    ],
)
def test_other_regressions_give_predictions(tmp_path: Path, params: dict[str, Any]) -> None:
    model = lgb.LGBMRegressor(n_estimators=10, verbose=-1, **params).fit(DIABETES_X, DIABETES_Y)
    runtime = load(save(model, tmp_path))
    assert [s.name for s in runtime.native.outputs] == ["predictions"]
    out = runtime.predict({"input": DIABETES_X}, ["predictions"])
    np.testing.assert_allclose(out["predictions"][:, 0], model.predict(DIABETES_X), rtol=1e-12)


def test_ranking_gives_the_raw_score(tmp_path: Path) -> None:
    model = lgb.LGBMRanker(n_estimators=5, verbose=-1, min_child_samples=5)
    model.fit(CANCER_X, CANCER_Y, group=[50] * 11 + [19])
    runtime = load(save(model, tmp_path))
    out = runtime.predict({"input": CANCER_X}, ["predictions"])
    np.testing.assert_array_equal(out["predictions"][:, 0], model.predict(CANCER_X))


def test_categorical_splits_serve(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = np.stack([rng.integers(0, 20, 600), rng.random(600)], axis=1).astype(np.float32)
    y = (np.isin(x[:, 0], [1, 3, 5, 7, 11]) ^ (x[:, 1] > 0.5)).astype(int)
    model = lgb.LGBMClassifier(n_estimators=10, verbose=-1).fit(x, y, categorical_feature=[0])
    runtime = load(save(model, tmp_path))
    out = runtime.predict({"input": x}, ["label"])
    np.testing.assert_array_equal(out["label"][:, 0], model.predict(x))


def test_output_subsets_and_empty_batches(binary: lgb.LGBMClassifier, tmp_path: Path) -> None:
    runtime = load(save(binary, tmp_path))
    out = runtime.predict({"input": CANCER_X[:3]}, ["label"])
    assert list(out) == ["label"]
    assert out["label"].shape == (3, 1)
    empty = runtime.predict({"input": np.zeros((0, 30), np.float32)}, ["probabilities", "label"])
    assert empty["probabilities"].shape == (0, 2)
    assert empty["label"].shape == (0, 1)


def test_integer_features_are_read_as_numbers(binary: lgb.LGBMClassifier, tmp_path: Path) -> None:
    cfg = config(input=[{"name": "counts", "data_type": "TYPE_INT64", "dims": [30]}])
    runtime = load(save(binary, tmp_path), cfg)
    assert runtime.native.inputs == (TensorSpec("counts", "INT64", (-1, 30)),)
    rows = np.rint(CANCER_X[:20]).astype(np.int64)
    out = runtime.predict({"counts": rows}, ["probabilities"])
    np.testing.assert_array_equal(out["probabilities"], binary.predict_proba(rows.astype(float)))


# ------------------------------------------------------------------ configuration


def test_auto_configuration_batches_with_the_native_names(
    binary: lgb.LGBMClassifier, tmp_path: Path
) -> None:
    runtime = load(save(binary, tmp_path))
    done = complete_config(config(backend="lightgbm"), runtime.native, "config.yaml")
    assert done.max_batch_size == 64
    assert [(i.name, i.data_type, i.dims) for i in done.input] == [("input", "TYPE_FP32", [30])]
    assert [(o.name, o.data_type, o.dims) for o in done.output] == [
        ("probabilities", "TYPE_FP64", [2]),
        ("label", "TYPE_INT64", [1]),
    ]


def test_config_can_narrow_the_floats_to_fp32(regressor: lgb.LGBMRegressor, tmp_path: Path) -> None:
    cfg = config(
        max_batch_size=8,
        input=[{"name": "x", "data_type": "TYPE_FP32", "dims": [10]}],
        output=[{"name": "predictions", "data_type": "TYPE_FP32", "dims": [1]}],
    )
    runtime = load(save(regressor, tmp_path), cfg)
    assert runtime.native.outputs == (TensorSpec("predictions", "FP32", (-1, 1)),)
    complete_config(cfg, runtime.native, "config.yaml")
    out = runtime.predict({"x": DIABETES_X}, ["predictions"])
    assert out["predictions"].dtype == np.float32
    np.testing.assert_allclose(out["predictions"][:, 0], regressor.predict(DIABETES_X), rtol=1e-6)


def test_two_config_inputs_or_a_text_input_are_refused(
    binary: lgb.LGBMClassifier, tmp_path: Path
) -> None:
    save(binary, tmp_path)
    two = config(
        input=[
            {"name": "a", "data_type": "TYPE_FP32", "dims": [15]},
            {"name": "b", "data_type": "TYPE_FP32", "dims": [15]},
        ]
    )
    with pytest.raises(ModelLoadError, match="one feature matrix"):
        load(tmp_path, two)
    text = config(input=[{"name": "input", "data_type": "TYPE_STRING", "dims": [30]}])
    with pytest.raises(ModelLoadError, match="numeric"):
        load(tmp_path, text)


def test_default_model_filename_is_honoured(binary: lgb.LGBMClassifier, tmp_path: Path) -> None:
    runtime = load(
        save(binary, tmp_path, "cancer.txt"), config(default_model_filename="cancer.txt")
    )
    assert runtime.native.inputs[0].shape == (-1, 30)
    with pytest.raises(ModelLoadError, match=r"no model\.txt"):
        load(tmp_path)


def test_threads_split_the_cores_between_instances(
    binary: lgb.LGBMClassifier, tmp_path: Path
) -> None:
    save(binary, tmp_path)
    cores = os.cpu_count() or 1
    assert load(tmp_path, instances=1)._threads == max(1, cores - 1)
    assert load(tmp_path, instances=64)._threads == 1
    cfg = config(parameters={"intra_op_thread_count": {"string_value": "3"}})
    assert load(tmp_path, cfg)._threads == 3
    bad = config(parameters={"intra_op_thread_count": {"string_value": "0"}})
    with pytest.raises(ModelLoadError, match="intra_op_thread_count"):
        load(tmp_path, bad)


def test_gpu_instances_run_on_the_cpu_and_say_so(
    binary: lgb.LGBMClassifier, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(instance_group=[{"kind": "KIND_GPU", "count": 1}])
    with caplog.at_level(logging.INFO, logger="modelport.runtime.lightgbm"):
        runtime = load(save(binary, tmp_path), cfg)
    assert any("predicting on the CPU" in r.getMessage() for r in caplog.records)
    out = runtime.predict({"input": CANCER_X}, ["label"])
    np.testing.assert_array_equal(out["label"][:, 0], binary.predict(CANCER_X))


def test_instances_predict_concurrently_on_one_booster(
    binary: lgb.LGBMClassifier, tmp_path: Path
) -> None:
    """The scheduler runs several batches at once on the same runtime."""
    runtime = load(save(binary, tmp_path), instances=4)
    x = CANCER_X.astype(np.float32)
    expected = binary.predict_proba(x)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(
            pool.map(
                lambda i: runtime.predict({"input": x[i % 4 :: 4]}, ["probabilities"]), range(16)
            )
        )
    for i, out in enumerate(results):
        np.testing.assert_allclose(out["probabilities"], expected[i % 4 :: 4], atol=1e-6)


# ------------------------------------------------------------------ bad requests


@pytest.mark.parametrize("shape", [(2, 29), (2, 31), (30,), (1, 30, 1)])
def test_a_wrong_feature_count_is_the_callers_error(
    binary: lgb.LGBMClassifier, tmp_path: Path, shape: tuple[int, ...]
) -> None:
    runtime = load(save(binary, tmp_path))
    with pytest.raises(InvalidRequest, match="expects 30 features"):
        runtime.predict({"input": np.zeros(shape, np.float32)}, ["label"])


# ------------------------------------------------------------------ bad files


def _write(tmp_path: Path, data: bytes) -> Path:
    (tmp_path / "model.txt").write_bytes(data)
    return tmp_path


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (b"", "not 'tree'"),
        (b"hello world\n", "not 'tree'"),
        (b'{"learner": {}}', "not 'tree'"),
        (b"tree\nversion=v4\n", "max_feature_idx"),
        (b"tree\nmax_feature_idx=3\n", "has no num_class"),
    ],
)
def test_text_that_is_not_a_model_names_the_file_and_what_was_expected(
    tmp_path: Path, content: bytes, cause: str
) -> None:
    with pytest.raises(ModelLoadError) as info:
        load(_write(tmp_path, content))
    message = info.value.message
    assert str(tmp_path / "model.txt") in message
    assert cause in message
    assert "LightGBM" in message and "save_model" in message


def test_an_xgboost_model_named_model_txt_is_refused(tmp_path: Path) -> None:
    xgb = pytest.importorskip("xgboost")
    model = xgb.XGBClassifier(n_estimators=2).fit(CANCER_X, CANCER_Y)
    with pytest.raises(ModelLoadError, match="not a loadable LightGBM model"):
        load(_write(tmp_path, bytes(model.get_booster().save_raw("json"))))


def test_a_truncated_model_fails_the_load_wherever_it_is_cut(
    model_text: bytes, tmp_path: Path
) -> None:
    """Unchecked, lightgbm 4.7 aborts the whole process on a tree cut short."""
    trees_end = model_text.index(b"end of trees")
    for cut in np.linspace(1, trees_end - 1, 60).astype(int):
        with pytest.raises(ModelLoadError, match=r"model\.txt"):
            load(_write(tmp_path, model_text[:cut]))


def test_a_model_cut_after_its_trees_still_loads(model_text: bytes, tmp_path: Path) -> None:
    cut = model_text.index(b"feature_importances:")
    runtime = load(_write(tmp_path, model_text[:cut]))
    assert runtime.native.inputs[0].shape == (-1, 30)


def _replace_in_first_tree(text: bytes, key: bytes, new: bytes) -> bytes:
    start = text.index(b"Tree=0")
    line = text.index(b"\n" + key + b"=", start) + 1
    end = text.index(b"\n", line)
    return text[:line] + key + b"=" + new + text[end:]


@pytest.mark.parametrize(
    ("key", "value", "cause"),
    [
        (b"left_child", b"1 2 3", "values, expected"),
        (b"leaf_value", b"0.1 x", "not a number"),
        (b"split_feature", b"999", "split_feature"),
        (b"left_child", b"0", "do not form a tree"),
        (b"num_leaves", b"many", "not an integer"),
    ],
)
def test_damaged_trees_fail_the_load(tmp_path: Path, key: bytes, value: bytes, cause: str) -> None:
    """LightGBM parses trees where an error aborts the process; they are checked first."""
    # A stump of two leaves keeps the replacement values short.
    stump = lgb.LGBMClassifier(n_estimators=1, num_leaves=2, verbose=-1).fit(CANCER_X, CANCER_Y)
    text = stump.booster_.model_to_string().encode()
    damaged = _replace_in_first_tree(text, key, value)
    # Keep tree_sizes true to the damaged tree so the damage itself is what is found.
    grown = len(damaged) - len(text)
    header_end = damaged.index(b"\ntree_sizes=") + 1
    line_end = damaged.index(b"\n", header_end)
    sizes = damaged[header_end + len(b"tree_sizes=") : line_end].split()
    sizes[0] = str(int(sizes[0]) + grown).encode()
    damaged = damaged[:header_end] + b"tree_sizes=" + b" ".join(sizes) + damaged[line_end:]
    with pytest.raises(ModelLoadError, match=cause):
        load(_write(tmp_path, damaged))


def test_class_counts_that_disagree_fail_the_load(model_text: bytes, tmp_path: Path) -> None:
    """LightGBM sizes its outputs from these; a wrong one corrupts memory when it predicts."""
    damaged = model_text.replace(b"num_tree_per_iteration=1\n", b"num_tree_per_iteration=8\n")
    with pytest.raises(ModelLoadError, match="disagree"):
        load(_write(tmp_path, damaged))


def test_tree_sizes_that_overrun_the_file_fail_the_load(model_text: bytes, tmp_path: Path) -> None:
    start = model_text.index(b"tree_sizes=") + len(b"tree_sizes=")
    damaged = model_text[:start] + b"999999 " + model_text[start:]
    with pytest.raises(ModelLoadError, match="cut short"):
        load(_write(tmp_path, damaged))
