"""``optimize_version`` with OpenVINO installed: its candidates, their judgement, and the winner.

The hardware is described by hand (BF16 units or not, OpenVINO or not) so
the candidate list is the same on every machine; the candidates themselves
run on the real OpenVINO. Where an answer depends on the real CPU computing
in bf16, the test says so and is skipped on CPUs without BF16 units.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from rich.console import Console

from modelport.config.model import parse_model_config
from modelport.controlplane.lifecycle import load_version
from modelport.dataplane.runtime.onnx import load_onnx
from modelport.dataplane.runtime.openvino import OpenVinoRuntime
from modelport.optimize.tune import command
from modelport.optimize.tune.command import OptimizeOptions, optimize_version
from modelport.optimize.tune.hardware import CPUINFO, Hardware, parse_cpuinfo
from modelport.optimize.tune.measure import Timing
from modelport.optimize.tune.report import print_report

OPENVINO = ["openvino-fp32", "openvino-bf16", "openvino-int8"]


def _options(version: Path, data: Path, **kw: object) -> OptimizeOptions:
    """Options that write the best candidate whatever the timing noise (see test_optimize_noise)."""
    kw.setdefault("write_within_noise", True)
    return OptimizeOptions(path=version, data=data, seconds=0.01, **kw)  # type: ignore[arg-type]


def _real_cpu_has_bf16() -> bool:
    if not CPUINFO.exists():
        return False
    _, features = parse_cpuinfo(CPUINFO.read_text(errors="replace"))
    return bool({"AMX-BF16", "AVX-512 BF16"} & set(features))


@pytest.fixture
def bf16_hardware(hardware: Hardware) -> Hardware:
    """The conftest machine with BF16 units and OpenVINO installed."""
    return replace(hardware, features=(*hardware.features, "AMX-BF16"), openvino="test (CPU)")


def test_openvino_candidates_are_judged_and_timed(
    repo: Path, rows: Path, bf16_hardware: Hardware
) -> None:
    report = optimize_version(_options(repo, rows), hardware=bf16_hardware)
    outcomes = {o.name: o for o in report.outcomes}
    assert set(OPENVINO) <= set(outcomes)
    for name in OPENVINO:
        outcome = outcomes[name]
        assert not outcome.failed, (name, outcome.failed)
        assert outcome.judgement is not None and outcome.timings, name
        assert outcome.settings["runtime"] == "openvino"
        assert outcome.status in ("chosen", "lost", "out of budget")
    fp32 = outcomes["openvino-fp32"].judgement
    assert fp32 is not None and fp32.max_abs_diff is not None and fp32.max_abs_diff < 1e-4
    assert outcomes["openvino-bf16"].settings["precision"] == "bf16"

    skipped = {s.name: s.reason for s in report.skipped}
    assert "openvino" not in skipped  # installed: tried, not skipped
    assert "tried through OpenVINO" in skipped["bf16"]

    body = json.loads((repo.parent / "2" / "report.json").read_text())
    assert set(OPENVINO) <= {c["name"] for c in body["candidates"]}
    assert body["hardware"]["openvino"] == "test (CPU)" and body["hardware"]["bf16_fast"]
    assert "OpenVINO: test (CPU)" in (repo.parent / "2" / "report.md").read_text()


def test_no_bf16_candidate_without_bf16_units(repo: Path, rows: Path, hardware: Hardware) -> None:
    report = optimize_version(_options(repo, rows), hardware=replace(hardware, openvino="t"))
    names = {o.name for o in report.outcomes}
    assert {"openvino-fp32", "openvino-int8"} <= names and "openvino-bf16" not in names
    skipped = {s.name: s.reason for s in report.skipped}
    assert "no BF16 units" in skipped["openvino-bf16"]
    assert "no BF16 units" in skipped["bf16"]


def test_without_openvino_it_is_skipped_with_the_extra_to_install(
    repo: Path, rows: Path, hardware: Hardware
) -> None:
    report = optimize_version(_options(repo, rows), hardware=hardware)
    assert not any(o.name.startswith("openvino") for o in report.outcomes)
    skipped = {s.name: s.reason for s in report.skipped}
    assert skipped["openvino"] == (
        "not installed (pip install 'modelport[openvino]', Intel CPUs/GPUs)"
    )
    console = Console(record=True, width=200)
    print_report(report, console)
    assert "pip install 'modelport[openvino]'" in console.export_text()  # not read as markup


@pytest.mark.skipif(not _real_cpu_has_bf16(), reason="this CPU has no BF16 units: bf16 is f32")
def test_bf16_outside_a_tiny_budget_is_never_chosen(
    repo: Path, rows: Path, bf16_hardware: Hardware
) -> None:
    # bf16 keeps 8 bits of mantissa: its answers differ from the original's by
    # about 1e-3 of their scale, f32 ones by about 1e-7.
    report = optimize_version(
        _options(repo, rows, metric="max_abs_diff", budget=1e-4), hardware=bf16_hardware
    )
    outcomes = {o.name: o for o in report.outcomes}
    bf16 = outcomes["openvino-bf16"]
    assert bf16.status == "out of budget" and "exceeds" in bf16.reason
    fp32 = outcomes["openvino-fp32"]
    assert fp32.judgement is not None and fp32.judgement.within
    assert report.winner.name != "openvino-bf16"
    written = (repo.parent / "2" / "report.md").read_text()
    assert "| openvino-bf16 |" in written and "out of budget: " in written


def _openvino_looks_fastest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Timings scaled so an OpenVINO candidate wins; loading, judging and writing stay real."""
    real: Callable[..., Timing] = command.time_candidate

    def timed(predict: Any, *args: Any, **kwargs: Any) -> Timing:
        timing = real(predict, *args, **kwargs)
        if not isinstance(getattr(predict, "__self__", None), OpenVinoRuntime):
            return timing
        return Timing(
            timing.threads,
            timing.p50_ms / 1e3,
            timing.p99_ms / 1e3,
            {b: r * 1e3 for b, r in timing.throughput.items()},
        )

    monkeypatch.setattr(command, "time_candidate", timed)


def test_openvino_winner_is_written_and_loads_on_the_server_loader(
    repo: Path, rows: Path, bf16_hardware: Hardware, monkeypatch: pytest.MonkeyPatch
) -> None:
    _openvino_looks_fastest(monkeypatch)
    report = optimize_version(
        _options(repo, rows, metric="max_abs_diff", budget=0.5), hardware=bf16_hardware
    )
    assert report.winner.name in OPENVINO and report.served_by == "openvino"
    written = repo.parent / "2"
    assert {p.name for p in written.iterdir()} == {
        "model.onnx",
        "config.yaml",
        "report.json",
        "report.md",
    }
    raw = yaml.safe_load((written / "config.yaml").read_text())
    assert raw["backend"] == "openvino" and "optimization" not in raw
    config = parse_model_config(raw, str(written / "config.yaml"))
    assert config.parameter("INFERENCE_NUM_THREADS") == str(report.threads)
    assert config.parameter("intra_op_thread_count") is None
    bf16 = "YES" if report.winner.name == "openvino-bf16" else "NO"
    assert config.parameter("HINT_BF16") == bf16
    assert json.loads((written / "report.json").read_text())["chosen"]["backend"] == "openvino"
    assert any("backend: openvino" in note for note in report.notes)
    assert "# Copy backend too" in (written / "config.yaml").read_text()

    # The model directory's config is what the server reads: this one, copied there.
    version = load_version("tiny", 2, written, config, str(written / "config.yaml"))
    try:
        assert version.config.backend == "openvino"
        assert isinstance(version.servable.scheduler.runtime, OpenVinoRuntime)
        x = np.load(rows)[:8]
        got = version.servable.scheduler.runtime.predict({"x": x}, ["y"])["y"]
    finally:
        version.servable.scheduler.close()
    original = load_onnx(repo, parse_model_config({"name": "tiny"}, "c"), 1)
    want = original.predict({"x": x}, ["y"])["y"]
    original.unload()
    np.testing.assert_allclose(got, want, rtol=0, atol=0.5 * float(np.abs(want).max()))
