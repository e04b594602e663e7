"""The XGBoost runtime: native-format loading, signature from the objective, whole batches.

Models are trained here on scikit-learn's bundled data sets and saved the way
users save them (``get_booster().save_model``), so the server's answers can
be compared with the framework's own on the same rows.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost as xgb
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from modelport.config.model import ModelConfig, parse_model_config
from modelport.controlplane.repository.autoconfig import complete_config
from modelport.dataplane.runtime import backend_for, runtime_loader
from modelport.dataplane.runtime.xgboost import XGBoostRuntime, load_xgboost
from modelport.errors import ConfigError, InvalidRequest, ModelLoadError
from modelport.types import TensorSpec

CANCER_X, CANCER_Y = load_breast_cancer(return_X_y=True)
IRIS_X, IRIS_Y = load_iris(return_X_y=True)
DIABETES_X, DIABETES_Y = load_diabetes(return_X_y=True)


def config(**fields: Any) -> ModelConfig:
    return parse_model_config({"name": "m", **fields}, "config.yaml")


def save(model: Any, directory: Path, filename: str = "model.ubj") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.get_booster().save_model(str(directory / filename))
    return directory


def load(directory: Path, cfg: ModelConfig | None = None, instances: int = 1) -> XGBoostRuntime:
    return load_xgboost(directory, cfg or config(), instances)


def all_outputs(runtime: XGBoostRuntime) -> list[str]:
    return [s.name for s in runtime.native.outputs]


@pytest.fixture(scope="module")
def binary() -> xgb.XGBClassifier:
    return xgb.XGBClassifier(n_estimators=20, max_depth=3).fit(CANCER_X, CANCER_Y)


@pytest.fixture(scope="module")
def multiclass() -> xgb.XGBClassifier:
    return xgb.XGBClassifier(n_estimators=10, max_depth=3).fit(IRIS_X, IRIS_Y)


@pytest.fixture(scope="module")
def regressor() -> xgb.XGBRegressor:
    return xgb.XGBRegressor(n_estimators=20, max_depth=3).fit(DIABETES_X, DIABETES_Y)


# ------------------------------------------------------------------ selection


def test_the_model_files_pick_this_backend(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text("{}")
    assert backend_for(tmp_path) == "xgboost"
    (tmp_path / "model.ubj").write_bytes(b"{}")
    assert backend_for(tmp_path) == "xgboost"
    assert runtime_loader("xgboost") is load_xgboost


# ------------------------------------------------------------------ signature and values


@pytest.mark.parametrize("filename", ["model.ubj", "model.json"])
def test_binary_classifier_gives_probabilities_and_labels(
    binary: xgb.XGBClassifier, tmp_path: Path, filename: str
) -> None:
    runtime = load(save(binary, tmp_path, filename))
    assert runtime.native.inputs == (TensorSpec("input", "FP32", (-1, 30)),)
    assert runtime.native.outputs == (
        TensorSpec("probabilities", "FP32", (-1, 2)),
        TensorSpec("label", "INT64", (-1, 1)),
    )
    out = runtime.predict({"input": CANCER_X.astype(np.float32)}, ["probabilities", "label"])
    assert out["probabilities"].dtype == np.float32
    assert out["label"].dtype == np.int64
    np.testing.assert_allclose(out["probabilities"], binary.predict_proba(CANCER_X), atol=1e-6)
    np.testing.assert_array_equal(out["label"][:, 0], binary.predict(CANCER_X))


@pytest.mark.parametrize("filename", ["model.ubj", "model.json"])
def test_multiclass_softprob_gives_k_probabilities(
    multiclass: xgb.XGBClassifier, tmp_path: Path, filename: str
) -> None:
    runtime = load(save(multiclass, tmp_path, filename))
    assert runtime.native.outputs == (
        TensorSpec("probabilities", "FP32", (-1, 3)),
        TensorSpec("label", "INT64", (-1, 1)),
    )
    out = runtime.predict({"input": IRIS_X.astype(np.float32)}, ["label", "probabilities"])
    np.testing.assert_allclose(out["probabilities"], multiclass.predict_proba(IRIS_X), atol=1e-6)
    np.testing.assert_array_equal(out["label"][:, 0], multiclass.predict(IRIS_X))


def test_softmax_gives_labels_only(tmp_path: Path) -> None:
    model = xgb.XGBClassifier(n_estimators=5, objective="multi:softmax").fit(IRIS_X, IRIS_Y)
    runtime = load(save(model, tmp_path))
    assert runtime.native.outputs == (TensorSpec("label", "INT64", (-1, 1)),)
    out = runtime.predict({"input": IRIS_X.astype(np.float32)}, ["label"])
    np.testing.assert_array_equal(out["label"][:, 0], model.predict(IRIS_X))


@pytest.mark.parametrize("filename", ["model.ubj", "model.json"])
def test_regressor_gives_predictions(
    regressor: xgb.XGBRegressor, tmp_path: Path, filename: str
) -> None:
    runtime = load(save(regressor, tmp_path, filename))
    assert runtime.native.outputs == (TensorSpec("predictions", "FP32", (-1, 1)),)
    out = runtime.predict({"input": DIABETES_X.astype(np.float32)}, ["predictions"])
    assert out["predictions"].shape == (len(DIABETES_X), 1)
    np.testing.assert_array_equal(out["predictions"][:, 0], regressor.predict(DIABETES_X))


@pytest.mark.parametrize("strategy", ["one_output_per_tree", "multi_output_tree"])
def test_multi_target_regression_gives_one_column_per_target(tmp_path: Path, strategy: str) -> None:
    targets = np.stack([DIABETES_Y, -DIABETES_Y], axis=1)
    model = xgb.XGBRegressor(
        n_estimators=5, max_depth=3, tree_method="hist", multi_strategy=strategy
    ).fit(DIABETES_X, targets)
    runtime = load(save(model, tmp_path))
    assert runtime.native.outputs == (TensorSpec("predictions", "FP32", (-1, 2)),)
    out = runtime.predict({"input": DIABETES_X.astype(np.float32)}, ["predictions"])
    np.testing.assert_array_equal(out["predictions"], model.predict(DIABETES_X))


def test_ranking_gives_the_raw_score(tmp_path: Path) -> None:
    groups = np.arange(len(CANCER_Y)) // 50
    model = xgb.XGBRanker(n_estimators=5).fit(CANCER_X, CANCER_Y, qid=groups)
    runtime = load(save(model, tmp_path))
    assert runtime.native.outputs == (TensorSpec("predictions", "FP32", (-1, 1)),)
    out = runtime.predict({"input": CANCER_X.astype(np.float32)}, ["predictions"])
    np.testing.assert_array_equal(out["predictions"][:, 0], model.predict(CANCER_X))


@pytest.mark.parametrize("booster", ["gblinear", "dart"])
def test_linear_and_dart_boosters_serve(tmp_path: Path, booster: str) -> None:
    model = xgb.XGBClassifier(n_estimators=5, booster=booster).fit(CANCER_X, CANCER_Y)
    runtime = load(save(model, tmp_path))
    out = runtime.predict({"input": CANCER_X.astype(np.float32)}, ["probabilities", "label"])
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(CANCER_X), atol=1e-6)
    np.testing.assert_array_equal(out["label"][:, 0], model.predict(CANCER_X))


def test_early_stopped_model_answers_with_its_best_iteration(tmp_path: Path) -> None:
    model = xgb.XGBClassifier(n_estimators=200, learning_rate=0.5, early_stopping_rounds=2)
    model.fit(IRIS_X[::2], IRIS_Y[::2], eval_set=[(IRIS_X[1::2], IRIS_Y[1::2])], verbose=False)
    assert model.best_iteration + 1 < model.get_booster().num_boosted_rounds()
    runtime = load(save(model, tmp_path))
    out = runtime.predict({"input": IRIS_X.astype(np.float32)}, ["probabilities"])
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(IRIS_X), atol=1e-6)


def test_categorical_splits_read_category_codes(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"colour": pd.Categorical(rng.choice(list("rgbk"), 400)), "x": rng.random(400)}
    )
    y = ((frame["colour"] == "g") ^ (frame["x"] > 0.5)).astype(int)
    model = xgb.XGBClassifier(n_estimators=5, enable_categorical=True, max_cat_to_onehot=1)
    model.fit(frame, y)
    runtime = load(save(model, tmp_path))
    codes = np.stack([frame["colour"].cat.codes, frame["x"]], axis=1).astype(np.float32)
    out = runtime.predict({"input": codes}, ["label"])
    np.testing.assert_array_equal(out["label"][:, 0], model.predict(frame))


def test_output_subsets_and_order_follow_the_request(
    binary: xgb.XGBClassifier, tmp_path: Path
) -> None:
    runtime = load(save(binary, tmp_path))
    out = runtime.predict({"input": CANCER_X[:3].astype(np.float32)}, ["label"])
    assert list(out) == ["label"]
    assert out["label"].shape == (3, 1)


def test_an_empty_batch_gives_empty_outputs(binary: xgb.XGBClassifier, tmp_path: Path) -> None:
    runtime = load(save(binary, tmp_path))
    out = runtime.predict({"input": np.zeros((0, 30), np.float32)}, ["probabilities", "label"])
    assert out["probabilities"].shape == (0, 2)
    assert out["label"].shape == (0, 1)
    assert out["label"].dtype == np.int64


# ------------------------------------------------------------------ configuration


def test_auto_configuration_batches_with_the_native_names(
    binary: xgb.XGBClassifier, tmp_path: Path
) -> None:
    runtime = load(save(binary, tmp_path))
    done = complete_config(config(backend="xgboost"), runtime.native, "config.yaml")
    assert done.max_batch_size == 64
    assert [(i.name, i.data_type, i.dims) for i in done.input] == [("input", "TYPE_FP32", [30])]
    assert [(o.name, o.data_type, o.dims) for o in done.output] == [
        ("probabilities", "TYPE_FP32", [2]),
        ("label", "TYPE_INT64", [1]),
    ]


def test_config_names_and_types_the_single_input(binary: xgb.XGBClassifier, tmp_path: Path) -> None:
    cfg = config(
        max_batch_size=8,
        input=[{"name": "features", "data_type": "TYPE_FP64", "dims": [30]}],
        output=[{"name": "probabilities", "data_type": "TYPE_FP64", "dims": [2]}],
    )
    runtime = load(save(binary, tmp_path), cfg)
    assert runtime.native.inputs == (TensorSpec("features", "FP64", (-1, 30)),)
    assert runtime.native.outputs[0] == TensorSpec("probabilities", "FP64", (-1, 2))
    complete_config(cfg, runtime.native, "config.yaml")  # agrees with itself
    out = runtime.predict({"features": CANCER_X}, ["probabilities"])
    assert out["probabilities"].dtype == np.float64
    np.testing.assert_allclose(out["probabilities"], binary.predict_proba(CANCER_X), atol=1e-6)


def test_a_config_output_name_the_model_lacks_fails_at_load(
    binary: xgb.XGBClassifier, tmp_path: Path
) -> None:
    cfg = config(output=[{"name": "scores", "data_type": "TYPE_FP32", "dims": [2]}])
    runtime = load(save(binary, tmp_path), cfg)
    with pytest.raises(ConfigError, match="scores"):
        complete_config(cfg, runtime.native, "config.yaml")


def test_two_config_inputs_are_refused(binary: xgb.XGBClassifier, tmp_path: Path) -> None:
    cfg = config(
        input=[
            {"name": "a", "data_type": "TYPE_FP32", "dims": [15]},
            {"name": "b", "data_type": "TYPE_FP32", "dims": [15]},
        ]
    )
    with pytest.raises(ModelLoadError, match="one feature matrix"):
        load(save(binary, tmp_path), cfg)


def test_a_text_input_type_is_refused(binary: xgb.XGBClassifier, tmp_path: Path) -> None:
    cfg = config(input=[{"name": "input", "data_type": "TYPE_STRING", "dims": [30]}])
    with pytest.raises(ModelLoadError, match="numeric"):
        load(save(binary, tmp_path), cfg)


def test_default_model_filename_is_honoured(binary: xgb.XGBClassifier, tmp_path: Path) -> None:
    runtime = load(
        save(binary, tmp_path, "cancer.json"), config(default_model_filename="cancer.json")
    )
    assert runtime.native.inputs[0].shape == (-1, 30)
    with pytest.raises(ModelLoadError, match=r"other\.ubj"):
        load(tmp_path, config(default_model_filename="other.ubj"))


def _nthread(runtime: XGBoostRuntime) -> int:
    booster = runtime._booster.booster
    return int(json.loads(booster.save_config())["learner"]["generic_param"]["nthread"])


def test_threads_split_the_cores_between_instances(
    binary: xgb.XGBClassifier, tmp_path: Path
) -> None:
    save(binary, tmp_path)
    cores = os.cpu_count() or 1
    assert _nthread(load(tmp_path, instances=1)) == max(1, cores - 1)
    assert _nthread(load(tmp_path, instances=64)) == 1
    cfg = config(parameters={"intra_op_thread_count": {"string_value": "3"}})
    assert _nthread(load(tmp_path, cfg)) == 3


@pytest.mark.parametrize("value", ["many", "0", "-2"])
def test_a_bad_thread_count_fails_the_load(
    binary: xgb.XGBClassifier, tmp_path: Path, value: str
) -> None:
    cfg = config(parameters={"intra_op_thread_count": {"string_value": value}})
    with pytest.raises(ModelLoadError, match="intra_op_thread_count"):
        load(save(binary, tmp_path), cfg)


def test_gpu_instances_run_where_they_can_and_say_where(
    binary: xgb.XGBClassifier, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(instance_group=[{"kind": "KIND_GPU", "count": 1}])
    with caplog.at_level(logging.INFO, logger="modelport.runtime.xgboost"):
        runtime = load(save(binary, tmp_path), cfg)
    assert runtime.device == "cpu" or runtime.device.startswith("cuda")
    devices = [getattr(r, "device", None) for r in caplog.records]
    assert runtime.device in devices
    if runtime.device == "cpu":
        assert any("predicting on the CPU" in r.getMessage() for r in caplog.records)
    out = runtime.predict({"input": CANCER_X.astype(np.float32)}, ["probabilities"])
    np.testing.assert_allclose(out["probabilities"], binary.predict_proba(CANCER_X), atol=1e-5)


def test_instances_predict_concurrently_on_one_booster(
    binary: xgb.XGBClassifier, tmp_path: Path
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
    binary: xgb.XGBClassifier, tmp_path: Path, shape: tuple[int, ...]
) -> None:
    runtime = load(save(binary, tmp_path))
    with pytest.raises(InvalidRequest, match="expects 30 features"):
        runtime.predict({"input": np.zeros(shape, np.float32)}, ["label"])


def test_a_missing_input_is_the_callers_error(binary: xgb.XGBClassifier, tmp_path: Path) -> None:
    runtime = load(save(binary, tmp_path))
    with pytest.raises(InvalidRequest, match="'input'"):
        runtime.predict({"x": np.zeros((1, 30), np.float32)}, ["label"])


# ------------------------------------------------------------------ bad files


def test_a_missing_file_names_both_candidates(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model\.ubj or model\.json"):
        load(tmp_path)


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (b"", "neither UBJSON nor JSON"),
        (b"tree\nversion=v4\n", "neither UBJSON nor JSON"),
        (b'{"hello": 1}', "'learner'"),
        (b"[1, 2, 3]", "'learner'"),
        (b'{"learner": {', "invalid JSON"),
        (b'{"learner": {}, "version": [3, 2, 0]}', "not a loadable XGBoost model"),
    ],
)
def test_json_that_is_not_a_model_names_the_file_and_what_was_expected(
    tmp_path: Path, content: bytes, cause: str
) -> None:
    (tmp_path / "model.json").write_bytes(content)
    with pytest.raises(ModelLoadError) as info:
        load(tmp_path)
    message = info.value.message
    assert str(tmp_path / "model.json") in message
    assert cause in message
    assert "Booster.save_model" in message


def test_a_truncated_ubj_fails_the_load_wherever_it_is_cut(
    binary: xgb.XGBClassifier, tmp_path: Path
) -> None:
    """Unchecked, xgboost 3.2 reads past a cut UBJSON buffer and kills the process."""
    good = bytes(binary.get_booster().save_raw("ubj"))
    for cut in np.linspace(1, len(good) - 1, 60).astype(int):
        (tmp_path / "model.ubj").write_bytes(good[:cut])
        with pytest.raises(ModelLoadError, match=r"model\.ubj"):
            load(tmp_path)


def test_damaged_lengths_in_a_ubj_fail_the_load(binary: xgb.XGBClassifier, tmp_path: Path) -> None:
    good = bytearray(binary.get_booster().save_raw("ubj"))
    at = good.index(b"left_children[$l#L") + len(b"left_children[$l#L")
    good[at : at + 8] = (10**9).to_bytes(8, "big")
    (tmp_path / "model.ubj").write_bytes(bytes(good))
    with pytest.raises(ModelLoadError, match="runs past the end"):
        load(tmp_path)


def _left_too_far(tree: dict[str, Any]) -> None:
    tree["left_children"][0] = 999


def _both_children_alike(tree: dict[str, Any]) -> None:
    tree["right_children"][0] = tree["left_children"][0]


def _parent_too_far(tree: dict[str, Any]) -> None:
    tree["parents"][1] = 999


def _feature_too_far(tree: dict[str, Any]) -> None:
    tree["split_indices"][0] = 999


def _wrong_id(tree: dict[str, Any]) -> None:
    tree["id"] = 7


@pytest.mark.parametrize(
    ("damage", "cause"),
    [
        (_left_too_far, "child index"),
        (_both_children_alike, "do not form a tree"),
        (_parent_too_far, "parents"),
        (_feature_too_far, "split_indices"),
        (_wrong_id, "has id 7"),
    ],
)
def test_damaged_tree_indices_fail_the_load(
    binary: xgb.XGBClassifier, tmp_path: Path, damage: Any, cause: str
) -> None:
    """XGBoost follows these indices unchecked; a bad one must not reach it."""
    doc = json.loads(bytes(binary.get_booster().save_raw("json")))
    damage(doc["learner"]["gradient_booster"]["model"]["trees"][0])
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelLoadError, match=cause):
        load(tmp_path)


def test_a_tree_group_beyond_the_outputs_fails_the_load(
    binary: xgb.XGBClassifier, tmp_path: Path
) -> None:
    doc = json.loads(bytes(binary.get_booster().save_raw("json")))
    doc["learner"]["gradient_booster"]["model"]["tree_info"][0] = 5
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelLoadError, match=r"output 5, the model has outputs 0\.\.0"):
        load(tmp_path)


def test_trees_reading_past_the_inputs_width_fail_the_load(
    binary: xgb.XGBClassifier, tmp_path: Path
) -> None:
    doc = json.loads(bytes(binary.get_booster().save_raw("json")))
    doc["learner"]["learner_model_param"]["num_feature"] = "5"
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelLoadError, match=r"reads feature \d+, the model has 5"):
        load(tmp_path)


def test_damaged_tree_indices_in_ubj_fail_the_load(
    binary: xgb.XGBClassifier, tmp_path: Path
) -> None:
    good = bytearray(binary.get_booster().save_raw("ubj"))
    at = good.index(b"left_children[$l#L") + len(b"left_children[$l#L") + 8
    good[at : at + 4] = (999).to_bytes(4, "big")
    (tmp_path / "model.ubj").write_bytes(bytes(good))
    with pytest.raises(ModelLoadError, match="child index"):
        load(tmp_path)


def test_a_lightgbm_file_named_model_json_is_refused(tmp_path: Path) -> None:
    lgb = pytest.importorskip("lightgbm")
    model = lgb.LGBMClassifier(n_estimators=2, verbose=-1).fit(CANCER_X, CANCER_Y)
    (tmp_path / "model.json").write_text(model.booster_.model_to_string())
    with pytest.raises(ModelLoadError, match="starts with 'tree"):
        load(tmp_path)
