"""``modelport optimize`` on the three benchmark models, against the issue's targets.

Run ``python benchmarks/optimize_targets.py [--seconds S]``. It writes the
MLP and CNN (benchmarks/models.py) and a native scikit-learn
GradientBoostingClassifier (``model.skops``, breast cancer data) into a
temporary repository, runs ``python -m modelport optimize --objective
throughput --json`` on each with rows from ``sample_input`` (fixed seed),
and prints, from each report.json:

- CNN, MLP: FP32 (the original) and the best INT8 candidate's rows/s at
  batch 32 at the same thread count, their ratio (target >= 1.5), and the
  INT8 candidate's top-1 agreement on the held-out rows (target >= 99%);
  INT8 candidates are ONNX Runtime's (``int8-*``) and, with
  ``modelport[openvino]`` installed, ``openvino-int8``;
- GBT: the chosen candidate (native or ONNX), rows/s of both, and whether
  the predicted classes are identical (agreement 1.0).

Figures are single-process and on a shared machine: absolute numbers are
printed beside the ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from models import BASE_CONFIG, BUILDERS, sample_input, write_model  # noqa: E402

ROWS = {"cnn": 512, "mlp": 2048, "gbt": 569}


def _native_gbt(repo: Path) -> None:
    import skops.io as sio
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier

    data = load_breast_cancer()
    model = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0)
    model.fit(data.data.astype(np.float32), data.target)
    (repo / "gbt" / "1").mkdir(parents=True)
    sio.dump(model, repo / "gbt" / "1" / "model.skops")
    (repo / "gbt" / "config.yaml").write_text(yaml.safe_dump({"max_batch_size": 64}))


def _optimize(version: Path, data: Path, seconds: float) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "modelport",
        "optimize",
        str(version),
        "--data",
        str(data),
        "--objective",
        "throughput",
        "--seconds",
        str(seconds),
        "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{version}: optimize failed:\n{done.stderr}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def _at(candidate: dict[str, Any], threads: int, batch: str) -> float:
    for timing in candidate["timings"]:
        if timing["threads"] == threads:
            return float(timing["rows_per_s_by_batch"].get(batch, float("nan")))
    return float("nan")


def _int8_line(name: str, report: dict[str, Any]) -> str:
    by_name = {c["name"]: c for c in report["candidates"]}
    original = by_name["original"]
    int8 = [c for c in report["candidates"] if "int8" in c["name"] and c["best"]]
    best = max(int8, key=lambda c: c["best"]["rows_per_s"])
    threads = best["best"]["threads"]
    fp32, quant = _at(original, threads, "32"), _at(best, threads, "32")
    return (
        f"{name}: chosen {report['chosen']['candidate']}; best INT8 {best['name']}: "
        f"{quant:,.0f} rows/s vs FP32 {fp32:,.0f} rows/s at batch 32, {threads} thread(s) "
        f"= {quant / fp32:.2f}x (target 1.5x); top-1 agreement "
        f"{best['metric']['top1_agreement']:.4f} on {report['rows']['held_out']} held-out rows "
        "(target 0.99)"
    )


def _gbt_line(report: dict[str, Any]) -> str:
    chosen = next(c for c in report["candidates"] if c["status"] == "chosen")
    speeds = ", ".join(
        f"{c['name']} {c['best']['rows_per_s']:,.0f} rows/s (b{c['best']['best_batch']}, "
        f"{c['best']['threads']} thr)"
        for c in report["candidates"]
        if c["best"]
    )
    return (
        f"gbt: chosen {chosen['name']}; top-1 agreement {chosen['metric']['top1_agreement']:.4f} "
        f"(identical classes: {chosen['metric']['top1_agreement'] == 1.0}); {speeds}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="optimize-targets-") as tmp:
        root = Path(tmp)
        repo = root / "repo"
        for name in ("cnn", "mlp"):
            write_model(repo, name, BUILDERS[name](), BASE_CONFIG)
        _native_gbt(repo)
        reports: dict[str, dict[str, Any]] = {}
        for name in ("cnn", "mlp", "gbt"):
            data = root / f"{name}.npy"
            np.save(data, sample_input(name, ROWS[name]))
            reports[name] = _optimize(repo / name / "1", data, args.seconds)
        hardware = reports["cnn"]["hardware"]
        print(f"hardware: {hardware['cpu']}, {hardware['cores']} cores, {hardware['features']}")
        print(_int8_line("cnn", reports["cnn"]))
        print(_int8_line("mlp", reports["mlp"]))
        print(_gbt_line(reports["gbt"]))


if __name__ == "__main__":
    main()
