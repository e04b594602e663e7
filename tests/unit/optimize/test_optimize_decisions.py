"""The pure parts: cpuinfo, budgets, metrics, the choice between candidates."""

from __future__ import annotations

import numpy as np
import pytest

from modelport.optimize.tune.choose import Outcome, decide
from modelport.optimize.tune.errors import OptimizeFailed
from modelport.optimize.tune.hardware import parse_cpuinfo
from modelport.optimize.tune.measure import Timing, batch_sizes, instances_for, thread_counts
from modelport.optimize.tune.metrics import Judgement, judge, parse_budget, roc_auc
from modelport.types import ModelSignature, TensorSpec

CLASSIFIER = ModelSignature(
    inputs=(TensorSpec("x", "FP32", (-1, 4)),),
    outputs=(TensorSpec("y", "FP32", (-1, 2)),),
    max_batch_size=8,
)


def test_cpuinfo_features_and_model() -> None:
    text = "model name\t: Xeon\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_tile amx_int8\n"
    model, features = parse_cpuinfo(text)
    assert model == "Xeon"
    assert features == ("AVX2", "AVX-512", "AVX-512 VNNI", "AMX", "AMX-INT8")


@pytest.mark.parametrize(("text", "value"), [("0.5%", 0.005), ("0.005", 0.005), ("0", 0.0)])
def test_budget_forms(text: str, value: float) -> None:
    assert parse_budget(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["half", "-1%", "100%"])
def test_bad_budget(text: str) -> None:
    with pytest.raises(OptimizeFailed, match="--budget"):
        parse_budget(text)


def test_agreement_budget_worked_example() -> None:
    original = np.zeros((1000, 2), np.float32)
    original[:, 0] = 1
    five, six = original.copy(), original.copy()
    five[:5] = [0, 1]
    six[:6] = [0, 1]
    assert judge("accuracy", 0.005, CLASSIFIER, {"y": original}, {"y": five}, None).within
    out = judge("accuracy", 0.005, CLASSIFIER, {"y": original}, {"y": six}, None)
    assert not out.within and out.metric == "agreement" and "0.9940" in out.why


def test_auc_matches_pairs() -> None:
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(labels, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert roc_auc(labels, np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)


def test_sweeps() -> None:
    assert thread_counts(1) == [1]
    assert thread_counts(6) == [1, 2, 4, 6]
    assert batch_sizes(64) == [1, 8, 32, 64]
    assert batch_sizes(16) == [1, 8, 16]
    assert instances_for(2, 8) == 4 and instances_for(8, 2) == 1


def _outcome(name: str, within: bool, p50: float, rows: float, threads: int = 1) -> Outcome:
    judgement = Judgement("agreement", None, 1.0 if within else 0.9, within, None, None, "why")
    timing = Timing(threads, p50, p50, {1: 1000 / p50, 32: rows})
    return Outcome(name, name, judgement=judgement, timings=[timing])


def test_out_of_budget_never_wins_however_fast() -> None:
    outcomes = [_outcome("slow", True, 5.0, 100), _outcome("fast", False, 0.1, 10_000)]
    winner = decide(outcomes, "latency", 2)
    assert winner is not None and winner.name == "slow"
    assert outcomes[1].status == "out of budget"


def test_throughput_counts_instances() -> None:
    # 1 thread x 8 instances at 900 rows/s beats 8 threads x 1 instance at 5,000.
    one = _outcome("one-thread", True, 2.0, 900, threads=1)
    eight = _outcome("eight-threads", True, 0.5, 5000, threads=8)
    winner = decide([one, eight], "throughput", 8)
    assert winner is one
    assert "7,200 rows/s" in eight.reason
    assert decide([one, eight], "latency", 8) is eight
