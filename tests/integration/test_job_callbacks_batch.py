"""Job callbacks and batch jobs over files, end to end (docs/jobs.md).

The server runs with a config file naming a callback secret, an allow-list
holding only the test's receiver (an ``http.server`` on a free loopback
port, listed as an IP literal) and a ``batch_dir``. Model: ``add_sub``
(ONNX: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, 16 values each).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Server, free_port, start_server, stop_server
from tests.integration.test_auth import _model, cli

pytestmark = pytest.mark.integration

SECRET = "callback-secret-for-tests-0123456789"
FAILS_BEFORE_SUCCESS = 2


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """Records every callback; ``/flaky`` answers 500 to a job's first two tries."""

    port: int
    got: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def for_job(self, job_id: str) -> list[Received]:
        with self.lock:
            return [r for r in self.got if r.headers.get("x-modelport-job") == job_id]

    def wait_accepted(self, job_id: str, within: float = 30) -> list[Received]:
        deadline = time.monotonic() + within
        while not any(r.status == 200 for r in self.for_job(job_id)):
            assert time.monotonic() < deadline, self.for_job(job_id)
            time.sleep(0.05)
        return self.for_job(job_id)


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            with receiver.lock:
                earlier = [
                    r
                    for r in receiver.got
                    if r.headers.get("x-modelport-job") == headers.get("x-modelport-job")
                ]
                status = (
                    500 if self.path == "/flaky" and len(earlier) < FAILS_BEFORE_SUCCESS else 200
                )
                receiver.got.append(Received(self.path, headers, body, status))
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    port = free_port()
    found = Receiver(port)
    http = ThreadingHTTPServer(("127.0.0.1", port), _handler(found))
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield found
    http.shutdown()
    http.server_close()


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, receiver: Receiver
) -> Iterator[tuple[Server, Path]]:
    root = tmp_path_factory.mktemp("jobs-extra")
    _model(root / "repo", "add_sub", None)
    batch_dir = root / "batches"
    batch_dir.mkdir()
    config = root / "server.yaml"
    config.write_text(
        json.dumps(
            {
                "job_callback_hosts": [f"127.0.0.1:{receiver.port}"],
                "job_callback_secret": SECRET,
                "batch_dir": str(batch_dir),
            }
        )
    )
    server = start_server(root / "repo", root / "server.log", "--config", str(config))
    yield server, batch_dir
    stop_server(server)


def _row(n: int) -> dict[str, Any]:
    return {"id": f"r{n}", "INPUT0": [float(n)] * 16, "INPUT1": [float(n % 7)] * 16}


def _submit(server: Server, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{server.base}/api/v1/jobs/batch", json=body, headers=headers)


def _finished(server: Server, job_id: str, within: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        state: dict[str, Any] = httpx.get(f"{server.base}/api/v1/jobs/{job_id}").json()
        if state["state"] in ("succeeded", "failed", "cancelled"):
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.1)


def _signature_valid(got: Received) -> bool:
    timestamp = got.headers["x-modelport-timestamp"]
    expected = hmac.new(
        SECRET.encode(), timestamp.encode() + b"." + got.body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(got.headers["x-modelport-signature"], "sha256=" + expected)


def test_thousand_rows_joined_to_their_rows_with_a_signed_callback(
    setup: tuple[Server, Path], receiver: Receiver
) -> None:
    server, batch_dir = setup
    rows = [_row(n) for n in range(1000)]
    (batch_dir / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    body = {"model": "add_sub", "input": "in.jsonl", "output": "out.jsonl", "id_column": "id"}
    submitted = _submit(server, body, **{"X-Callback-Url": receiver.url("/done")})
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert submitted.headers["location"] == f"/api/v1/jobs/{job_id}"

    state = _finished(server, job_id)
    assert state["state"] == "succeeded", state
    assert state["batch"]["rows"] == 1000
    assert (state["batch"]["succeeded"], state["batch"]["failed"]) == (1000, 0)
    out = [json.loads(line) for line in (batch_dir / "out.jsonl").read_text().splitlines()]
    assert [o["id"] for o in out] == [r["id"] for r in rows]
    for row, answer in zip(rows, out, strict=True):
        assert answer["OUTPUT0"] == [
            a + b for a, b in zip(row["INPUT0"], row["INPUT1"], strict=True)
        ]
        assert answer["OUTPUT1"] == [
            a - b for a, b in zip(row["INPUT0"], row["INPUT1"], strict=True)
        ]

    got = receiver.wait_accepted(job_id)
    assert len(got) == 1 and got[0].path == "/done"
    assert _signature_valid(got[0])
    assert abs(int(got[0].headers["x-modelport-timestamp"]) - time.time()) < 60
    sent = json.loads(got[0].body)
    assert (sent["id"], sent["state"]) == (job_id, "succeeded")
    assert sent["result"] == f"/api/v1/jobs/{job_id}/result"
    assert sent["batch"]["succeeded"] == 1000
    shown = httpx.get(f"{server.base}/api/v1/jobs/{job_id}").json()["callback"]
    assert shown["state"] == "delivered"


def test_a_bad_row_is_reported_with_its_number_and_the_rest_run(
    setup: tuple[Server, Path],
) -> None:
    server, batch_dir = setup
    lines = [json.dumps(_row(n)) for n in range(5)]
    lines[2] = json.dumps({"id": "r2", "INPUT0": [1.0] * 16, "INPUT1": "not numbers"})
    (batch_dir / "bad.jsonl").write_text("\n".join(lines) + "\n")
    done = cli(
        "jobs", "batch", "add_sub", "bad.jsonl", "bad-out.jsonl",
        "--id-column", "id", "--json", "--url", server.base,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    state = _finished(server, json.loads(done.stdout)["id"])
    assert state["state"] == "succeeded", state
    batch = state["batch"]
    assert (batch["rows"], batch["succeeded"], batch["failed"]) == (5, 4, 1)
    assert [f["row"] for f in batch["failures"]] == [3]
    assert "row 3" in batch["failures"][0]["error"]
    out = [json.loads(line) for line in (batch_dir / "bad-out.jsonl").read_text().splitlines()]
    assert [o["id"] for o in out] == ["r0", "r1", "r2", "r3", "r4"]
    assert out[2]["OUTPUT0"] is None
    assert out[3]["OUTPUT0"] == [3.0 + 3.0] * 16


def test_idempotency_key_returns_the_first_batch_job_once_its_output_exists(
    setup: tuple[Server, Path],
) -> None:
    server, batch_dir = setup
    (batch_dir / "once.jsonl").write_text("".join(json.dumps(_row(n)) + "\n" for n in range(3)))
    body = {"model": "add_sub", "input": "once.jsonl", "output": "once-out.jsonl"}
    first = _submit(server, body, **{"Idempotency-Key": "nightly-1"})
    assert first.status_code == 202, first.text
    assert _finished(server, first.json()["id"])["state"] == "succeeded"
    # The output exists now: without the key the same body is refused ...
    assert _submit(server, body).status_code == 409
    # ... with it, the first job is the answer, whatever the body says.
    again = _submit(
        server, {**body, "output": "elsewhere.jsonl"}, **{"Idempotency-Key": "nightly-1"}
    )
    assert again.status_code == 202, again.text
    assert again.headers["location"] == first.headers["location"]
    assert not (batch_dir / "elsewhere.jsonl").exists()
    malformed = _submit(server, {**body, "output": "x.jsonl"}, **{"Idempotency-Key": "a b"})
    assert malformed.status_code == 400
    assert "Idempotency-Key" in malformed.json()["error"]


def test_parquet_in_parquet_out(setup: tuple[Server, Path]) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    server, batch_dir = setup
    rows = [_row(n) for n in range(600)]
    pq.write_table(pa.Table.from_pylist(rows), batch_dir / "in.parquet")
    body = {
        "model": "add_sub",
        "input": "in.parquet",
        "output": "scored.parquet",
        "id_column": "id",
        "chunk_rows": 256,
    }
    submitted = _submit(server, body)
    assert submitted.status_code == 202, submitted.text
    state = _finished(server, submitted.json()["id"])
    assert state["state"] == "succeeded", state
    assert (state["batch"]["rows"], state["batch"]["succeeded"]) == (600, 600)
    out = pq.read_table(batch_dir / "scored.parquet").to_pylist()
    assert not (batch_dir / "scored.parquet.partial").exists()
    assert [o["id"] for o in out] == [r["id"] for r in rows]
    for row, answer in zip(rows, out, strict=True):
        assert answer["OUTPUT0"] == [
            a + b for a, b in zip(row["INPUT0"], row["INPUT1"], strict=True)
        ]
    # The output exists now: the same output again is refused.
    assert _submit(server, body).status_code == 409


def test_paths_outside_batch_dir_are_refused(setup: tuple[Server, Path], tmp_path: Path) -> None:
    server, batch_dir = setup
    outside = tmp_path / "secret.jsonl"
    outside.write_text(json.dumps(_row(1)) + "\n")
    (batch_dir / "link.jsonl").symlink_to(outside)
    (batch_dir / "ok.jsonl").write_text(json.dumps(_row(1)) + "\n")
    for input_name, output_name in [
        ("../secret.jsonl", "x.jsonl"),
        (str(outside), "x.jsonl"),
        ("link.jsonl", "x.jsonl"),
        ("ok.jsonl", "../x.jsonl"),
        ("ok.jsonl", "/tmp/x.jsonl"),
    ]:
        body = {"model": "add_sub", "input": input_name, "output": output_name}
        refused = _submit(server, body)
        assert refused.status_code == 400, (input_name, output_name, refused.text)
        assert "batch_dir" in refused.json()["error"]
    assert not (batch_dir.parent / "x.jsonl").exists()


def test_a_callback_host_not_on_the_list_is_refused_at_submission(
    setup: tuple[Server, Path], receiver: Receiver
) -> None:
    server, batch_dir = setup
    (batch_dir / "one.jsonl").write_text(json.dumps(_row(1)) + "\n")
    before = httpx.get(f"{server.base}/api/v1/jobs").json()["jobs"]
    for url, host in [
        ("http://hooks.example.com/done", "hooks.example.com"),
        (f"http://127.0.0.1:{receiver.port + 1}/done", f"127.0.0.1:{receiver.port + 1}"),
        (f"http://localhost:{receiver.port}/done", f"localhost:{receiver.port}"),
    ]:
        body = {"model": "add_sub", "input": "one.jsonl", "output": "one-out.jsonl"}
        refused = _submit(server, body, **{"X-Callback-Url": url})
        assert refused.status_code == 400, refused.text
        assert repr(host) in refused.json()["error"]
    assert httpx.get(f"{server.base}/api/v1/jobs").json()["jobs"] == before


def test_an_infer_job_calls_back_when_it_ends(
    setup: tuple[Server, Path], receiver: Receiver
) -> None:
    server, _ = setup
    row = _row(5)
    request = {
        "inputs": [
            {"name": name, "shape": [1, 16], "datatype": "FP32", "data": row[name]}
            for name in ("INPUT0", "INPUT1")
        ]
    }
    headers = {"Prefer": "respond-async", "X-Callback-Url": receiver.url("/infer-done")}
    submitted = httpx.post(f"{server.base}/v2/models/add_sub/infer", json=request, headers=headers)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    got = receiver.wait_accepted(job_id)
    assert len(got) == 1 and got[0].path == "/infer-done" and _signature_valid(got[0])
    told = json.loads(got[0].body)
    assert (told["id"], told["state"]) == (job_id, "succeeded")
    refused = httpx.post(
        f"{server.base}/v2/models/add_sub/infer",
        json=request,
        headers={"Prefer": "respond-async", "X-Callback-Url": "http://hooks.example.com/x"},
    )
    assert refused.status_code == 400 and "'hooks.example.com'" in refused.json()["error"]


def test_a_failing_receiver_gets_one_accepted_delivery_after_retries(
    setup: tuple[Server, Path], receiver: Receiver
) -> None:
    server, batch_dir = setup
    (batch_dir / "two.jsonl").write_text(json.dumps(_row(1)) + "\n" + json.dumps(_row(2)) + "\n")
    body = {
        "model": "add_sub",
        "input": "two.jsonl",
        "output": "two-out.jsonl",
        "callback_url": receiver.url("/flaky"),
    }
    submitted = _submit(server, body)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    got = receiver.wait_accepted(job_id)
    assert [r.status for r in got] == [500] * FAILS_BEFORE_SUCCESS + [200]
    assert all(_signature_valid(r) for r in got)
    assert len({json.loads(r.body)["id"] for r in got}) == 1  # one job id: duplicates drop
    time.sleep(1.5)  # past the next retry's time: a delivered callback is not sent again
    assert len(receiver.for_job(job_id)) == FAILS_BEFORE_SUCCESS + 1
    shown = httpx.get(f"{server.base}/api/v1/jobs/{job_id}").json()["callback"]
    assert (shown["state"], shown["attempts"]) == ("delivered", FAILS_BEFORE_SUCCESS + 1)


def _counting_model(root: Path, counter: Path) -> None:
    """``count``: y = 2x, a tenth of a second per call, rows computed appended to ``counter``."""
    (root / "count" / "1").mkdir(parents=True)
    (root / "count" / "1" / "model.py").write_text(
        "import time\n\n"
        "class Model:\n"
        "    def predict(self, inputs):\n"
        '        x = inputs["x"]\n'
        "        if x.any():  # the load's warm-up sends zeros\n"
        "            time.sleep(0.1)\n"
        f"            with open({str(counter)!r}, 'a') as f:\n"
        "                f.write(f'{len(x)}\\n')\n"
        '        return {"y": x * 2}\n'
    )
    (root / "count" / "config.yaml").write_text(
        "max_batch_size: 10\n"
        "input:\n- {name: x, data_type: TYPE_FP32, dims: [2]}\n"
        "output:\n- {name: y, data_type: TYPE_FP32, dims: [2]}\n"
    )


def test_a_batch_resumes_after_a_restart_without_redoing_written_rows(tmp_path: Path) -> None:
    counter = tmp_path / "computed.txt"
    _counting_model(tmp_path / "repo", counter)
    batch_dir = tmp_path / "batches"
    batch_dir.mkdir()
    rows = [{"id": n, "x": [float(n + 1), 1.0]} for n in range(300)]
    (batch_dir / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "server.yaml"
    config.write_text(json.dumps({"batch_dir": str(batch_dir)}))
    args = ("--config", str(config), "--data-dir", str(tmp_path / "data"))
    server = start_server(tmp_path / "repo", tmp_path / "first.log", *args)
    try:
        body = {"model": "count", "input": "in.jsonl", "output": "out.jsonl", "id_column": "id"}
        submitted = _submit(server, body)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.base}/api/v1/jobs/{job_id}").json()["batch"]["rows"] < 50:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        stop_server(server)  # SIGTERM: the running job goes back to the queue
    done_before = _rows_computed(counter)
    assert done_before < 300
    server = start_server(tmp_path / "repo", tmp_path / "second.log", *args)
    try:
        state = _finished(server, job_id)
    finally:
        stop_server(server)
    assert state["state"] == "succeeded", state
    assert (state["batch"]["rows"], state["batch"]["succeeded"]) == (300, 300)
    out = [json.loads(line) for line in (batch_dir / "out.jsonl").read_text().splitlines()]
    assert [o["id"] for o in out] == list(range(300))
    assert [o["y"] for o in out] == [[2 * (n + 1.0), 2.0] for n in range(300)]
    assert _rows_computed(counter) <= 300 + 10  # at most one chunk computed twice


def _rows_computed(counter: Path) -> int:
    """Rows the model computed so far, from the counter file it appends to."""
    return sum(int(line) for line in counter.read_text().split())
