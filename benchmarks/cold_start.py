"""Cold starts: how much longer than a load the first answer of an unloaded model takes.

    .venv/bin/python benchmarks/cold_start.py [--runs 20] [--output FILE]
    make bench BENCH_ARGS="--cold-start-only"          # the same through make

One modelport server serves a copy of the bundled examples with
``--idle-unload 0.3``, so a version nobody calls for 0.3 s is unloaded. In
the same run:

1. **explicit loads:** ``--runs`` times, the operator unloads ``digits``
   (``POST /v2/repository/models/digits/unload``) and loads it again; the
   load request is timed until it answers (the version is ready then);
2. **cold starts:** ``--runs`` times, wait until the index says ``digits``
   is ``unloaded: idle``, then time one inference request from sending to
   the answer, which must say ``cold_start: true``.

The figure the target is set on is each cold start minus the median explicit
load: what waiting for a load adds beyond the load itself (target: median
at most 50 ms, worst at most 150 ms). Warm requests are timed too, for scale.
The machine may be shared: absolute times are printed beside the differences.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import servers  # noqa: E402
from workdirs import PYTHON  # noqa: E402

MODEL = "digits"
IDLE_S = 0.3
TARGET_MEDIAN_MS = 50.0
TARGET_WORST_MS = 150.0


def _examples() -> tuple[Path, Path]:
    from modelport.examples import repository_path, samples_path

    return repository_path(), samples_path() / f"{MODEL}.json"


def _state(client: httpx.Client) -> tuple[str, str]:
    entries = client.post("/v2/repository/index", json={}).json()
    for entry in entries:
        if entry.get("name") == MODEL and entry.get("version") == "1":
            return entry.get("state", ""), entry.get("reason", "")
    return "", ""


def _wait_idle(client: httpx.Client, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state, reason = _state(client)
        if state == "UNAVAILABLE" and "idle" in reason:
            return
        time.sleep(0.02)
    raise RuntimeError(f"{MODEL} was not unloaded for idleness within {timeout_s:.0f} s")


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def measure(runs: int) -> dict[str, list[float]]:
    repository, sample = _examples()
    body = sample.read_bytes()
    with tempfile.TemporaryDirectory(prefix="modelport-cold-") as tmp:
        repo = Path(tmp) / "models"
        shutil.copytree(repository, repo)
        server, http_port, _ = servers.modelport_server(
            PYTHON,
            repo,
            Path(tmp) / "server.log",
            Path(tmp),
            extra=["--idle-unload", str(IDLE_S), "--data-dir", str(Path(tmp) / "state")],
        )
        server.start()
        try:
            base = f"http://127.0.0.1:{http_port}"
            headers = {"content-type": "application/json"}
            loads: list[float] = []
            colds: list[float] = []
            warms: list[float] = []
            with httpx.Client(base_url=base, timeout=60.0) as client:
                for _ in range(runs):
                    answer = client.post(f"/v2/repository/models/{MODEL}/unload", json={})
                    answer.raise_for_status()
                    start = time.perf_counter()
                    answer = client.post(f"/v2/repository/models/{MODEL}/load", json={})
                    loads.append(time.perf_counter() - start)
                    answer.raise_for_status()
                for _ in range(runs):
                    _wait_idle(client)
                    start = time.perf_counter()
                    answer = client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
                    colds.append(time.perf_counter() - start)
                    answer.raise_for_status()
                    if answer.json().get("parameters", {}).get("cold_start") is not True:
                        raise RuntimeError(
                            f"the answer does not say it was a cold start: {answer.text}"
                        )
                    for _ in range(5):
                        start = time.perf_counter()
                        client.post(
                            f"/v2/models/{MODEL}/infer", content=body, headers=headers
                        ).raise_for_status()
                        warms.append(time.perf_counter() - start)
        finally:
            server.stop()
    return {"load": loads, "cold": colds, "warm": warms}


def report(times: dict[str, list[float]]) -> str:
    load_median = statistics.median(times["load"])
    extra = [cold - load_median for cold in times["cold"]]
    median_extra, worst_extra = _ms(statistics.median(extra)), _ms(max(extra))
    verdict = (
        "met" if median_extra <= TARGET_MEDIAN_MS and worst_extra <= TARGET_WORST_MS else "missed"
    )
    lines = [
        f"Cold starts of `{MODEL}` ({len(times['cold'])} runs; ms)",
        "",
        "| | median | worst |",
        "|---|--:|--:|",
        f"| explicit load (unload, then load) | {_ms(load_median):.1f} | "
        f"{_ms(max(times['load'])):.1f} |",
        f"| cold start: first answer | {_ms(statistics.median(times['cold'])):.1f} | "
        f"{_ms(max(times['cold'])):.1f} |",
        f"| cold start minus the median load | {median_extra:.1f} | {worst_extra:.1f} |",
        f"| warm request | {_ms(statistics.median(times['warm'])):.1f} | "
        f"{_ms(max(times['warm'])):.1f} |",
        "",
        f"Target: cold start minus the median load at most {TARGET_MEDIAN_MS:.0f} ms "
        f"(median) and {TARGET_WORST_MS:.0f} ms (worst): {verdict}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="loads and cold starts each")
    parser.add_argument("--output", type=Path, help="also write the table to this file")
    parser.add_argument("--json", action="store_true", help="print the raw times as JSON too")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    times = measure(args.runs)
    text = report(times)
    print(text)
    if args.json:
        print(json.dumps(times))
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
    return 0 if "met." in text else 1


if __name__ == "__main__":
    sys.exit(main())
