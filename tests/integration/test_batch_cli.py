"""``modelport batch`` end to end: the real command against the real server.

Predictions written by the command are compared with the same rows sent
directly to the server; a run killed with SIGKILL part of the way and rerun
with ``--resume`` must leave the same file as a run never interrupted.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = json.loads((ROOT / "src/modelport/examples/samples/breast_cancer.json").read_text())
ROW = np.array(SAMPLE["inputs"][0]["data"], dtype=np.float32)


def rows(n: int, seed: int = 0) -> np.ndarray:
    """``n`` breast_cancer rows: the sample, scaled row by row."""
    scale = np.random.default_rng(seed).uniform(0.7, 1.3, size=(n, 1)).astype(np.float32)
    return (ROW * scale).astype(np.float32)


def batch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelport", "batch", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )


def direct(server: Server, model: str, x: np.ndarray, step: int = 64) -> dict[str, Any]:
    """The server's outputs for ``x``, asked for directly in JSON, ``step`` rows a request."""
    found: dict[str, list[Any]] = {}
    for at in range(0, len(x), step):
        part = x[at : at + step]
        body = {"inputs": [{"name": "input", "shape": list(part.shape), "datatype": "FP32",
                            "data": part.reshape(-1).tolist()}]}  # fmt: skip
        answer = httpx.post(f"{server.base}/v2/models/{model}/infer", json=body, timeout=30)
        answer.raise_for_status()
        for out in answer.json()["outputs"]:
            found.setdefault(out["name"], []).extend(
                np.array(out["data"]).reshape(out["shape"]).tolist()
            )
    return {k: np.array(v) for k, v in found.items()}


def test_jsonl_with_ids_and_bad_rows(server: Server, tmp_path: Path) -> None:
    x = rows(150)
    lines = [json.dumps({"key": f"k{i}", "input": r.tolist()}) for i, r in enumerate(x)]
    lines[10] = "{not json"
    lines[20] = json.dumps({"key": "k20", "input": x[20].tolist()[:5]})
    lines[30] = json.dumps({"key": "k30"})
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "preds.jsonl"
    done = batch("breast_cancer", "--input", str(source), "--output", str(out),
                 "--server", server.base, "--id-column", "key", "--chunk-rows", "32")  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "150 rows: 147 succeeded, 3 failed" in done.stdout
    for row in (11, 21, 31):
        assert f"failed row {row}" in done.stdout
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(got) == 150
    assert got[10] == {"key": None, "label": None, "probabilities": None}
    assert got[20] == {"key": "k20", "label": None, "probabilities": None}
    good = [i for i in range(150) if i not in (10, 20, 30)]
    want = direct(server, "breast_cancer", x[good])
    assert [got[i]["key"] for i in good] == [f"k{i}" for i in good]
    assert [got[i]["label"] for i in good] == want["label"].reshape(-1).tolist()
    np.testing.assert_allclose(
        [got[i]["probabilities"] for i in good], want["probabilities"], rtol=1e-6
    )
    assert not Path(f"{out}.progress").exists()


def test_csv_columns_of_one_input_and_csv_out(server: Server, tmp_path: Path) -> None:
    x = rows(100, seed=1)
    source = tmp_path / "in.csv"
    with source.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([f"f{i}" for i in range(30)])
        writer.writerows([[repr(float(v)) for v in r] for r in x])
    out = tmp_path / "preds.csv"
    done = batch("breast_cancer", "--input", str(source), "--output", str(out),
                 "--server", server.base)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "100 rows: 100 succeeded, 0 failed" in done.stdout
    with out.open() as f:
        table = list(csv.reader(f))
    assert table[0] == ["label", "probabilities_0", "probabilities_1"]
    want = direct(server, "breast_cancer", x)
    assert [int(r[0]) for r in table[1:]] == want["label"].reshape(-1).tolist()
    np.testing.assert_allclose(
        [[float(v) for v in r[1:]] for r in table[1:]], want["probabilities"], rtol=1e-6
    )


def test_two_named_inputs_from_jsonl(server: Server, tmp_path: Path) -> None:
    a = np.arange(20 * 16, dtype=np.float32).reshape(20, 16)
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps({"INPUT0": r.tolist(), "INPUT1": [1.0] * 16}) + "\n" for r in a)
    )
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "MODELPORT_URL": server.base}  # the address other commands take
    done = batch("add_sub", "--input", str(source), "--output", str(out),
                 "--chunk-rows", "7", env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["OUTPUT0"] for g in got] == (a + 1).tolist()
    assert [g["OUTPUT1"] for g in got] == (a - 1).tolist()


def test_usage_errors_exit_2(server: Server, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"input": ROW.tolist()}) + "\n")
    unknown = batch("no_such_model", "--input", str(source), "--output",
                    str(tmp_path / "o.jsonl"), "--server", server.base)  # fmt: skip
    assert unknown.returncode == 2 and "no_such_model" in unknown.stderr
    wrong = batch("breast_cancer", "--input", str(source), "--output",
                  str(tmp_path / "o.txt"), "--server", server.base)  # fmt: skip
    assert wrong.returncode == 2 and ".jsonl, .csv or .parquet" in wrong.stderr
    nobody = batch("breast_cancer", "--input", str(source), "--output",
                   str(tmp_path / "o.jsonl"), "--server", "http://127.0.0.1:9")  # fmt: skip
    assert nobody.returncode == 2 and "cannot reach the server" in nobody.stderr


def test_killed_run_resumes_to_the_same_file(server: Server, tmp_path: Path) -> None:
    x = rows(6000, seed=2)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"input": r.tolist()}) + "\n" for r in x))
    args = ["--input", str(source), "--server", server.base, "--chunk-rows", "16",
            "--concurrency", "2"]  # fmt: skip
    whole = tmp_path / "whole.jsonl"
    assert batch("breast_cancer", *args, "--output", str(whole)).returncode == 0

    out = tmp_path / "cut.jsonl"
    checkpoint = Path(f"{out}.progress")
    rows_done = _kill_after_500_rows(args, out)
    assert 0 < rows_done < 6000

    refused = batch("breast_cancer", *args, "--output", str(out))
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = batch("breast_cancer", *args, "--output", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == whole.read_bytes()
    assert not checkpoint.exists()


def _kill_after_500_rows(args: list[str], out: Path) -> int:
    """Run a batch into ``out``, SIGKILL it once its checkpoint has passed 500 rows,
    and answer the rows the checkpoint holds."""
    checkpoint = Path(f"{out}.progress")
    process = subprocess.Popen(
        [sys.executable, "-m", "modelport", "batch", "breast_cancer", *args, "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint.exists() and json.loads(checkpoint.read_text() or "{}").get("rows", 0) > 500:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    rows: int = json.loads(checkpoint.read_text())["rows"]
    return rows


def test_repo_serves_the_repository_for_the_run(tmp_path: Path) -> None:
    x = rows(10, seed=3)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r.tolist()) + "\n" for r in x))
    out = tmp_path / "out.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    done = batch("breast_cancer", "--input", str(source), "--output", str(out),
                 "--repo", str(ROOT / "src/modelport/examples/models"), env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(out.read_text().splitlines()) == 10


def test_parquet_in_and_out_resumes_after_a_kill(server: Server, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    x = rows(6000, seed=4)
    source = tmp_path / "in.parquet"
    table = pa.table({"id": [f"r{i}" for i in range(len(x))], "input": x.tolist()})
    pq.write_table(table, source, row_group_size=1000)
    args = ["--input", str(source), "--server", server.base, "--chunk-rows", "16",
            "--concurrency", "2", "--id-column", "id"]  # fmt: skip
    whole = tmp_path / "whole.parquet"
    assert batch("breast_cancer", *args, "--output", str(whole)).returncode == 0

    out = tmp_path / "cut.parquet"
    _kill_after_500_rows(args, out)
    resumed = batch("breast_cancer", *args, "--output", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    got, want = pq.read_table(out), pq.read_table(whole)
    assert got.equals(want)
    assert got.column("id").to_pylist() == table.column("id").to_pylist()
    expected = direct(server, "breast_cancer", x[:64])
    assert got.column("label").to_pylist()[:64] == expected["label"].reshape(-1).tolist()


@pytest.fixture(scope="module")
def small_bodies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The bundled examples behind a 6000-byte body limit: 64 breast_cancer rows exceed it."""
    srv = start_server(None, tmp_path_factory.mktemp("small") / "server.log",
                       "--max-body-bytes", "6000")  # fmt: skip
    yield srv
    stop_server(srv)


def test_a_refused_chunk_fails_its_rows_with_the_servers_message(
    small_bodies: Server, tmp_path: Path
) -> None:
    x = rows(100, seed=5)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r.tolist()) + "\n" for r in x))
    out = tmp_path / "out.jsonl"
    done = batch("breast_cancer", "--input", str(source), "--output", str(out),
                 "--server", small_bodies.base, "--chunk-rows", "64")  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "100 rows: 36 succeeded, 64 failed" in done.stdout
    assert "failed row 1: 413" in done.stdout
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(g["label"] is None for g in got[:64])
    want = direct(small_bodies, "breast_cancer", x[64:], step=4)
    assert [g["label"] for g in got[64:]] == want["label"].reshape(-1).tolist()


def test_token_from_the_option_or_the_environment(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = subprocess.run(
        [sys.executable, "-m", "modelport", "keys", "create", "--data-dir", str(data),
         "--role", "invoker", "--models", "*"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    server = start_server(None, tmp_path / "server.log", "--data-dir", str(data))
    try:
        source = tmp_path / "in.jsonl"
        source.write_text(json.dumps(ROW.tolist()) + "\n")
        args = ["breast_cancer", "--input", str(source), "--server", server.base]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
        refused = batch(*args, "--output", str(tmp_path / "a.jsonl"), env=env)
        assert refused.returncode == 2 and "No token was sent" in refused.stderr
        given = batch(*args, "--output", str(tmp_path / "b.jsonl"), "--token", token, env=env)
        assert given.returncode == 0, given.stderr
        from_env = batch(*args, "--output", str(tmp_path / "c.jsonl"),
                         env={**env, "MODELPORT_TOKEN": token})  # fmt: skip
        assert from_env.returncode == 0, from_env.stderr
        assert (tmp_path / "b.jsonl").read_text() == (tmp_path / "c.jsonl").read_text()
    finally:
        stop_server(server)


def test_strings_go_and_come_back_as_bytes_tensors(server: Server, tmp_path: Path) -> None:
    words = [[f"w{i}", "é", "", "a,b"] for i in range(10)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"INPUT0": w}) + "\n" for w in words))
    out = tmp_path / "out.csv"
    done = batch("identity_bytes", "--input", str(source), "--output", str(out),
                 "--server", server.base)  # fmt: skip
    assert done.returncode == 0, done.stderr
    with out.open(newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["OUTPUT0_0", "OUTPUT0_1", "OUTPUT0_2", "OUTPUT0_3"]
    assert table[1:] == words
