"""``optimize_version`` end to end on a tiny classifier: what is written, and what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from modelport.config.model import parse_model_config
from modelport.dataplane.runtime.onnx import load_onnx
from modelport.optimize.tune.command import OptimizeOptions, optimize_version
from modelport.optimize.tune.errors import OptimizeFailed
from modelport.optimize.tune.hardware import Hardware


def _options(version: Path, data: Path, **kw: object) -> OptimizeOptions:
    """Options that write the best candidate whatever the timing noise (see test_optimize_noise)."""
    kw.setdefault("write_within_noise", True)
    return OptimizeOptions(path=version, data=data, seconds=0.01, **kw)  # type: ignore[arg-type]


def _entries(model_dir: Path) -> set[str]:
    return {p.name for p in model_dir.iterdir()}


def test_writes_next_version_with_config_and_reports(
    repo: Path, rows: Path, hardware: Hardware
) -> None:
    original = (repo / "model.onnx").read_bytes()
    report = optimize_version(_options(repo, rows), hardware=hardware)

    assert report.version == 2
    written = repo.parent / "2"
    assert {p.name for p in written.iterdir()} == {
        "model.onnx",
        "config.yaml",
        "report.json",
        "report.md",
    }
    assert (repo / "model.onnx").read_bytes() == original
    assert _entries(repo.parent) == {"1", "2", "config.yaml"}  # no staging left behind

    config = parse_model_config(yaml.safe_load((written / "config.yaml").read_text()), "test")
    assert [i.name for i in config.input] == ["x"] and [o.name for o in config.output] == ["y"]
    assert config.parameter("intra_op_thread_count") == str(report.threads)
    assert config.instance_group[0].count == report.instances
    assert config.optimization is not None and config.optimization.graph is not None

    body = json.loads((written / "report.json").read_text())
    names = {c["name"] for c in body["candidates"]}
    assert {"original", "fp32-basic", "int8-dynamic", "int8-static"} <= names
    assert [c["name"] for c in body["candidates"] if c["status"] == "chosen"] == [
        body["chosen"]["candidate"]
    ]
    assert {s["name"] for s in body["skipped"]} >= {"openvino", "cuda", "fp16", "bf16"}
    assert "agreement" in (written / "report.md").read_text()

    runtime = load_onnx(written, config, 1)  # the new version answers like the original
    x = np.load(rows)[:5]
    assert runtime.predict({"x": x}, ["y"])["y"].shape == (5, 3)
    runtime.unload()


def test_out_of_budget_candidate_is_never_chosen(
    repo: Path, rows: Path, hardware: Hardware
) -> None:
    report = optimize_version(
        _options(repo, rows, metric="max_abs_diff", budget=0.0), hardware=hardware
    )
    int8 = [o for o in report.outcomes if o.name.startswith("int8")]
    assert int8 and all(o.status == "out of budget" for o in int8)
    assert all("exceeds" in o.reason for o in int8)
    assert not report.winner.name.startswith("int8")


def test_labels_judge_accuracy(repo: Path, rows: Path, hardware: Hardware, tmp_path: Path) -> None:
    labels = tmp_path / "labels.npy"
    np.save(labels, np.random.default_rng(3).integers(0, 3, size=96))
    report = optimize_version(_options(repo, rows, labels=labels), hardware=hardware)
    judged = [o.judgement for o in report.outcomes if o.judgement is not None]
    assert judged and all(j.metric == "accuracy" and j.original is not None for j in judged)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((96, 5), np.float32), r"array 'x' has shape \[96, 5\].*\[-1, 8\]"),
        (np.zeros((20, 8), np.float32), "20 rows are too few; optimize needs at least 32"),
        (np.array([["a"] * 8] * 40), "'x'"),
    ],
)
def test_bad_rows_are_refused_and_nothing_written(
    repo: Path, tmp_path: Path, hardware: Hardware, array: np.ndarray, message: str
) -> None:
    data = tmp_path / "bad.npy"
    np.save(data, array)
    with pytest.raises(Exception, match=message):
        optimize_version(_options(repo, data), hardware=hardware)
    assert _entries(repo.parent) == {"1", "config.yaml"}


def test_label_file_of_wrong_length(
    repo: Path, rows: Path, tmp_path: Path, hardware: Hardware
) -> None:
    labels = tmp_path / "labels.npy"
    np.save(labels, np.zeros(10, np.int64))
    with pytest.raises(OptimizeFailed, match="has 10 labels, but --data has 96 rows"):
        optimize_version(_options(repo, rows, labels=labels), hardware=hardware)
    assert _entries(repo.parent) == {"1", "config.yaml"}


def test_python_model_cannot_be_optimized(tmp_path: Path, rows: Path, hardware: Hardware) -> None:
    version = tmp_path / "repo" / "custom" / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text("class Model:\n    pass\n")
    (tmp_path / "repo" / "custom" / "config.yaml").write_text("backend: python\n")
    with pytest.raises(OptimizeFailed, match="'python' model cannot be optimized"):
        optimize_version(_options(version, rows), hardware=hardware)
    assert {p.name for p in (tmp_path / "repo" / "custom").iterdir()} == {"1", "config.yaml"}


def test_auc_without_labels_is_refused(repo: Path, rows: Path, hardware: Hardware) -> None:
    with pytest.raises(OptimizeFailed, match="--metric auc needs --labels"):
        optimize_version(_options(repo, rows, metric="auc"), hardware=hardware)
