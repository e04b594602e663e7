"""The bundled example models load, agree with their configs and answer right.

They are what a first-time user serves, so a stale ONNX file or a config that
names the wrong tensor would break ``modelport serve`` before anything else.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from modelport.examples import repository_path, samples_path

ort = pytest.importorskip("onnxruntime")
datasets = pytest.importorskip("sklearn.datasets")

#: Example name -> loader of the scikit-learn dataset its sample was cut from.
DATASETS: dict[str, Callable[[], Any]] = {
    "breast_cancer": datasets.load_breast_cancer,
    "digits": datasets.load_digits,
}
#: Decimals the build script keeps in the sample values.
SAMPLE_DECIMALS = 4

EXAMPLES = sorted(DATASETS)


def _session(name: str) -> Any:
    path = repository_path() / name / "1" / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _config(name: str) -> dict[str, Any]:
    text = (repository_path() / name / "config.yaml").read_text(encoding="utf-8")
    config: dict[str, Any] = yaml.safe_load(text)
    return config


def _sample(name: str) -> dict[str, Any]:
    path = samples_path() / f"{name}.json"
    body: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return body


def test_repository_holds_exactly_the_examples() -> None:
    repository = repository_path()
    assert isinstance(repository, Path)
    assert sorted(p.name for p in repository.iterdir() if p.is_dir()) == EXAMPLES


@pytest.mark.parametrize("name", EXAMPLES)
def test_sample_predicts_its_rows_true_label(name: str) -> None:
    (tensor,) = _sample(name)["inputs"]
    assert tensor["datatype"] == "FP32"
    values = np.asarray(tensor["data"], dtype=np.float64)
    batch = values.astype(np.float32).reshape(tensor["shape"])

    # The sample must be a real dataset row (rounded as the build script
    # rounds); find it, so its true label comes from the dataset itself.
    # Compared in float64, before float32 adds its own rounding.
    dataset = DATASETS[name]()
    tolerance = 0.5 * 10.0**-SAMPLE_DECIMALS + 1e-9
    same = np.all(np.abs(dataset.data - values) <= tolerance, axis=1)
    (rows,) = np.nonzero(same)
    assert len(rows) >= 1, "sample is not a row of the dataset"
    true_labels = set(dataset.target[rows].tolist())
    assert len(true_labels) == 1

    label, probabilities = _session(name).run(["label", "probabilities"], {tensor["name"]: batch})
    assert label.shape == (1, 1)
    assert int(label[0, 0]) in true_labels
    assert int(probabilities[0].argmax()) == int(label[0, 0])
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", EXAMPLES)
def test_config_matches_graph(name: str) -> None:
    config = _config(name)
    session = _session(name)
    inputs = session.get_inputs()
    outputs = session.get_outputs()

    assert [i["name"] for i in config["input"]] == [i.name for i in inputs]
    assert [o["name"] for o in config["output"]] == [o.name for o in outputs]
    assert config["backend"] == "onnxruntime"
    assert config["max_batch_size"] > 0

    onnx_types = {"TYPE_FP32": "tensor(float)", "TYPE_INT64": "tensor(int64)"}
    for entry, value in zip(config["input"] + config["output"], inputs + outputs, strict=True):
        assert onnx_types[entry["data_type"]] == value.type
        # With max_batch_size > 0 Triton's dims leave out the batch dimension,
        # which the graph keeps dynamic.
        assert not isinstance(value.shape[0], int)
        assert list(value.shape[1:]) == entry["dims"]
