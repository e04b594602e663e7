"""``modelport validate``: the CI gate, through the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from typer.testing import CliRunner

from modelport.cli.main import app


def _copy_version(version: Path, number: int, scale: float = 1.0) -> Path:
    target = version.parent / str(number)
    shutil.copytree(version, target)
    if scale != 1.0:
        model = onnx.load(str(target / "model.onnx"))
        w = model.graph.initializer[2]
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * -scale, w.name))
        onnx.save(model, str(target / "model.onnx"))
    return target


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_same_model_passes(repo: Path, rows: Path) -> None:
    new = _copy_version(repo, 2)
    code, out = _run(
        "validate",
        str(new),
        "--data",
        str(rows),
        "--expect",
        "1",
        "--max-diff",
        "1e-5",
        "--max-latency-regression",
        "off",
        "--json",
    )
    assert code == 0, out
    body = json.loads(out)
    assert body["ok"] and {c["name"] for c in body["checks"]} == {"max_abs_diff", "top1_agreement"}


def test_changed_answers_fail_with_what_regressed(repo: Path, rows: Path) -> None:
    new = _copy_version(repo, 2, scale=1.0001 + 1)
    code, out = _run(
        "validate",
        str(new),
        "--data",
        str(rows),
        "--expect",
        str(repo),
        "--max-latency-regression",
        "off",
    )
    assert code == 1
    assert "regressed: top1_agreement" in out


def test_bad_expect_is_bad_input(repo: Path, rows: Path) -> None:
    code, out = _run("validate", str(repo), "--data", str(rows), "--expect", "7")
    assert code == 2 and "no such directory" in out


def test_optimize_cli_json_and_bad_input(repo: Path, rows: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((40, 3), np.float32))
    code, out = _run("optimize", str(repo), "--data", str(bad), "--json")
    assert code == 2 and '"ok": false' in out and "'x'" in out
    assert sorted(p.name for p in repo.parent.iterdir()) == ["1", "config.yaml"]
    code, out = _run(
        "optimize", str(repo), "--data", str(rows), "--seconds", "0.01", "--write-within-noise",
        "--json",
    )  # fmt: skip
    assert code == 0, out
    body = json.loads(out[out.index("{") :])
    assert body["version"] == 2 and body["hardware"]["cores"] >= 1
