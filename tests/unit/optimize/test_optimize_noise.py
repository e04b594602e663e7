"""The noise check: a new version only for a gain beyond measurement noise, and how it is shown."""

from __future__ import annotations

import itertools
import json
import stat
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from modelport.cli.main import app
from modelport.examples import repository_path
from modelport.optimize.tune import noise
from modelport.optimize.tune.choose import beyond_noise
from modelport.optimize.tune.command import OptimizeOptions, optimize_version
from modelport.optimize.tune.hardware import Hardware
from tests.unit.optimize.conftest import write_repo

# ---------------------------------------------------------------- the pure decision


def test_a_candidate_faster_in_every_round_by_more_than_the_spread_beats_it() -> None:
    check = beyond_noise([10.0, 10.4, 10.2, 10.1, 10.3], [8.0, 8.3, 8.1, 8.2, 8.4])
    assert check.beats
    assert check.gain == pytest.approx(10.2 / 8.2 - 1)
    assert check.noise == pytest.approx(0.4 / 8.2 / 2)


def test_rounds_that_interleave_are_noise() -> None:
    check = beyond_noise([10.0, 10.4, 10.2, 10.1, 10.3], [9.9, 10.3, 10.0, 10.1, 10.2])
    assert not check.beats


def test_a_steady_gain_smaller_than_the_spread_is_noise() -> None:
    # Separated (9.9 < 10.0) but the current version's rounds vary by ±50%.
    check = beyond_noise([10.0, 10.0, 10.0, 10.0, 20.0], [9.9, 9.9, 9.9, 9.9, 9.9])
    assert check.gain == pytest.approx(10.0 / 9.9 - 1)
    assert check.noise == pytest.approx(0.5)
    assert not check.beats


def test_identical_rounds_are_no_gain() -> None:
    check = beyond_noise([1.0] * 5, [1.0] * 5)
    assert (check.beats, check.gain, check.noise) == (False, 0.0, 0.0)


# ---------------------------------------------------------------- optimize_version


def _options(version: Path, data: Path, **kw: Any) -> OptimizeOptions:
    return OptimizeOptions(path=version, data=data, seconds=0.01, **kw)


def _ticks() -> Any:
    """A clock on which every call takes exactly one tick: every candidate is as fast."""
    return itertools.count().__next__


def test_within_noise_the_current_version_is_kept_and_nothing_written(
    repo: Path, rows: Path, hardware: Hardware
) -> None:
    report = optimize_version(_options(repo, rows), clock=_ticks(), hardware=hardware)
    assert report.kept == ("no candidate beat the current version beyond measurement noise (±0.0%)")
    assert sorted(p.name for p in repo.parent.iterdir()) == ["1", "config.yaml"]
    statuses = {o.name: o.status for o in report.outcomes}
    assert statuses["original"] == "kept"
    assert list(statuses.values()).count("within noise") == 1
    assert report.noise is not None and len(report.noise.current) == 5


def test_a_candidate_beyond_noise_is_written(
    repo: Path, rows: Path, hardware: Hardware, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[object] = []

    def halved(predict: Any, *args: Any, **kwargs: Any) -> float:
        seen.append(predict.__self__)
        return 2.0 if predict.__self__ is seen[0] else 1.0  # the current version goes first

    monkeypatch.setattr(noise, "round_cost", halved)
    report = optimize_version(_options(repo, rows), clock=_ticks(), hardware=hardware)
    assert not report.kept and report.version == 2
    assert report.noise is not None and report.noise.gain == pytest.approx(1.0)
    assert "100.0% better than the current version" in report.winner.reason
    assert report.winner.name != "original"
    body = json.loads((repo.parent / "2" / "report.json").read_text())
    assert body["written"] is True and body["noise_check"]["beyond_noise"] is True


def _matmul_with_row_bias() -> onnx.ModelProto:
    """x [N, 8] -> MatMul 8x16 -> Add bias [1, 16] -> y: the layout of scikit-learn's MLP graphs."""
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["y"])],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        [
            numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.standard_normal((1, 16)).astype(np.float32), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_per_channel_int8_builds_on_a_gemm_with_a_row_bias(
    tmp_path: Path, rows: Path, hardware: Hardware
) -> None:
    version = write_repo(tmp_path / "repo", _matmul_with_row_bias(), name="mlp")
    report = optimize_version(
        _options(version, rows, metric="max_abs_diff", budget=1.0),
        clock=_ticks(),
        hardware=hardware,
    )
    outcome = next(o for o in report.outcomes if o.name == "int8-static-per-channel")
    assert not outcome.failed, outcome.failed
    assert outcome.judgement is not None and outcome.judgement.within


def test_openvino_is_skipped_for_scikit_learn_operators_naming_them(
    tmp_path: Path, hardware: Hardware
) -> None:
    repo = tmp_path / "repo"
    (repo / "cancer" / "1").mkdir(parents=True)
    source = repository_path() / "breast_cancer" / "1" / "model.onnx"
    (repo / "cancer" / "1" / "model.onnx").write_bytes(source.read_bytes())
    (repo / "cancer" / "config.yaml").write_text("max_batch_size: 64\n")
    data = tmp_path / "rows.npy"
    np.save(data, np.random.default_rng(0).random((64, 30)).astype(np.float32))
    hardware = Hardware("t", 2, ("AVX2",), ("CPUExecutionProvider",), (), openvino="2026.0 (CPU)")
    report = optimize_version(
        _options(repo / "cancer" / "1", data), clock=_ticks(), hardware=hardware
    )
    skipped = {s.name: s.reason for s in report.skipped}
    assert "ai.onnx.ml operators in this graph (LinearClassifier, Scaler;" in skipped["openvino"]
    assert not [o for o in report.outcomes if o.name.startswith("openvino")]


# ---------------------------------------------------------------- the command line


def test_piped_table_keeps_each_candidate_on_one_line_and_says_why_nothing_was_written(
    repo: Path, rows: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(noise, "round_cost", lambda *args, **kwargs: 1.0)
    result = CliRunner().invoke(
        app, ["optimize", str(repo), "--data", str(rows), "--seconds", "0.01"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for name in ("original", "fp32-extended", "int8-dynamic", "int8-static-per-channel"):
        row = [line for line in lines if line.startswith(f"│ {name} ")]
        assert len(row) == 1, (name, result.stdout)
        assert row[0].rstrip().endswith("│")
    assert (
        "kept version 1: no candidate beat the current version beyond measurement noise (±0.0%)"
        in lines
    )
    assert sorted(p.name for p in repo.parent.iterdir()) == ["1", "config.yaml"]


def test_a_written_version_has_the_mode_of_its_sibling(repo: Path, rows: Path) -> None:
    repo.chmod(0o751)
    result = CliRunner().invoke(
        app,
        ["optimize", str(repo), "--data", str(rows), "--seconds", "0.01", "--write-within-noise"],
    )
    assert result.exit_code == 0, result.output
    written = repo.parent / "2"
    assert stat.S_IMODE(written.stat().st_mode) == 0o751
    sibling_file = stat.S_IMODE((repo / "model.onnx").stat().st_mode)
    for path in written.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == sibling_file, path
