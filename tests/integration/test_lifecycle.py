"""The server process as an operator sees it: repository polling, shutdown,
defaults, configuration precedence and Prometheus metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper
from prometheus_client.parser import text_string_to_metric_families

from modelport.examples import repository_path
from tests.integration.conftest import Server, free_port, start_server, stop_server
from tests.integration.models import add_sub_model

pytestmark = pytest.mark.integration

SAMPLES = repository_path().parent / "samples"

A = [0.5 * i for i in range(16)]
B = [0.25 * i - 1.0 for i in range(16)]
SUM = [a + b for a, b in zip(A, B, strict=True)]
DIFF = [a - b for a, b in zip(A, B, strict=True)]
ADD_SUB_REQUEST = {
    "inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": A},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": B},
    ]
}


# ------------------------------------------------------------------- helpers


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting until {what}")


def sub_add_model() -> onnx.ModelProto:
    """add_sub with its outputs swapped, to tell a reloaded file from the old one."""
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "sub_add",
        [
            helper.make_tensor_value_info("INPUT0", f, ["batch", 16]),
            helper.make_tensor_value_info("INPUT1", f, ["batch", 16]),
        ],
        [
            helper.make_tensor_value_info("OUTPUT0", f, ["batch", 16]),
            helper.make_tensor_value_info("OUTPUT1", f, ["batch", 16]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def write_version(staging: Path, model: onnx.ModelProto) -> Path:
    """A version directory holding ``model``, written outside the repository."""
    staging.mkdir(parents=True)
    onnx.save(model, str(staging / "model.onnx"))
    return staging


def infer(server: Server, model: str, version: str | None = None) -> httpx.Response:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return httpx.post(server.base + path, json=ADD_SUB_REQUEST, timeout=30)


def status(server: Server, path: str) -> int:
    return httpx.get(server.base + path, timeout=10).status_code


def outputs_of(response: httpx.Response) -> dict[str, list[float]]:
    return {o["name"]: o["data"] for o in response.json()["outputs"]}


class Hammer:
    """Threads sending add_sub requests in a loop, recording every outcome."""

    def __init__(self, server: Server, model: str, threads: int = 3) -> None:
        self.server = server
        self.model = model
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.versions: Counter[str] = Counter()
        self.answers: Counter[str] = Counter()
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        url = f"{self.server.base}/v2/models/{self.model}/infer"
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(url, json=ADD_SUB_REQUEST)
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.failures.append(f"transport: {exc!r}")
                    continue
                with self.lock:
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code}: {r.text}")
                        continue
                    out = outputs_of(r)
                    if (out["OUTPUT0"], out["OUTPUT1"]) == (SUM, DIFF):
                        self.answers["add_sub"] += 1
                    elif (out["OUTPUT0"], out["OUTPUT1"]) == (DIFF, SUM):
                        self.answers["sub_add"] += 1
                    else:
                        self.failures.append(f"wrong values: {out}")
                    self.versions[r.json()["model_version"]] += 1

    def count(self, counter: Counter[str], key: str) -> int:
        with self.lock:
            return counter[key]

    def __enter__(self) -> Hammer:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def spawn(
    args: list[str], env_extra: dict[str, str], log_path: Path, ready_port: int
) -> subprocess.Popen[bytes]:
    """``python -m modelport serve ARGS`` with extra environment; waits until ready."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    env.update(env_extra)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelport", "serve", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            url = f"http://127.0.0.1:{ready_port}/v2/health/ready"
            if httpx.get(url, timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise AssertionError(f"server not ready in time:\n{log_path.read_text()}")


def terminate(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# ---------------------------------------------------------- repository polling


@pytest.fixture(scope="module")
def poll_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An empty-ish repository and a staging area on the same file system."""
    root = tmp_path_factory.mktemp("poll")
    repo, staging = root / "repo", root / "staging"
    repo.mkdir()
    staging.mkdir()
    for name, versions in (("versioned", (1, 2)), ("doomed", (1,)), ("busy", (1,))):
        for v in versions:
            write_version(repo / name / str(v), add_sub_model())
    write_version(repo / "in_place" / "1", add_sub_model())
    return repo, staging


@pytest.fixture(scope="module")
def poll_server(
    poll_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    repo, _ = poll_dirs
    srv = start_server(
        repo, tmp_path_factory.mktemp("poll_log") / "server.log", "--poll-interval", "0.2"
    )
    yield srv
    stop_server(srv)


def test_poll_picks_up_a_new_model(poll_server: Server, poll_dirs: tuple[Path, Path]) -> None:
    repo, staging = poll_dirs
    assert status(poll_server, "/v2/models/fresh/ready") == 404
    write_version(staging / "fresh" / "1", add_sub_model())
    os.rename(staging / "fresh", repo / "fresh")  # appears whole, never half-written

    wait_until(lambda: status(poll_server, "/v2/models/fresh/ready") == 200, "'fresh' is ready")
    r = infer(poll_server, "fresh")
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == "1"
    assert outputs_of(r) == {"OUTPUT0": SUM, "OUTPUT1": DIFF}


def test_poll_serves_a_new_latest_version(
    poll_server: Server, poll_dirs: tuple[Path, Path]
) -> None:
    repo, staging = poll_dirs
    # Default policy (latest 1): version 2 of versions 1 and 2.
    r = infer(poll_server, "versioned")
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == "2"
    assert status(poll_server, "/v2/models/versioned/versions/1/ready") != 200

    os.rename(write_version(staging / "v3", add_sub_model()), repo / "versioned" / "3")

    def default_is_3() -> bool:
        r = infer(poll_server, "versioned")
        assert r.status_code == 200, r.text
        return bool(r.json()["model_version"] == "3")

    wait_until(default_is_3, "version 3 is the default")
    assert outputs_of(infer(poll_server, "versioned")) == {"OUTPUT0": SUM, "OUTPUT1": DIFF}
    wait_until(
        lambda: status(poll_server, "/v2/models/versioned/versions/2/ready") != 200,
        "version 2 is retired",
    )
    meta = httpx.get(f"{poll_server.base}/v2/models/versioned", timeout=10).json()
    assert "3" in meta["versions"]

    # Taking version 3 away again brings version 2 back as the latest.
    os.rename(repo / "versioned" / "3", staging / "v3_removed")

    def default_is_2() -> bool:
        r = infer(poll_server, "versioned")
        return r.status_code == 200 and r.json()["model_version"] == "2"

    wait_until(default_is_2, "version 2 is the default again")
    assert status(poll_server, "/v2/models/versioned/versions/3/ready") == 404


def test_poll_applies_a_changed_config(poll_server: Server, poll_dirs: tuple[Path, Path]) -> None:
    repo, staging = poll_dirs
    config_url = f"{poll_server.base}/v2/models/configured/config"
    os.rename(
        write_version(staging / "configured" / "1", add_sub_model()).parent, repo / "configured"
    )
    wait_until(
        lambda: status(poll_server, "/v2/models/configured/ready") == 200, "'configured' is ready"
    )
    assert httpx.get(config_url, timeout=10).json()["max_batch_size"] == 64

    new_config = staging / "configured.yaml"
    new_config.write_text("max_batch_size: 4\n")
    os.replace(new_config, repo / "configured" / "config.yaml")
    wait_until(
        lambda: httpx.get(config_url, timeout=10).json()["max_batch_size"] == 4,
        "max_batch_size 4 is applied",
    )
    r = infer(poll_server, "configured")
    assert r.status_code == 200, r.text
    assert outputs_of(r) == {"OUTPUT0": SUM, "OUTPUT1": DIFF}


def test_poll_drops_a_removed_model(poll_server: Server, poll_dirs: tuple[Path, Path]) -> None:
    repo, staging = poll_dirs
    assert status(poll_server, "/v2/models/doomed/ready") == 200
    os.rename(repo / "doomed", staging / "doomed_removed")

    wait_until(
        lambda: status(poll_server, "/v2/models/doomed/ready") == 404, "'doomed' is not found"
    )
    r = infer(poll_server, "doomed")
    assert r.status_code == 404
    assert "doomed" in r.json()["error"]
    index = httpx.post(f"{poll_server.base}/v2/repository/index", json={}, timeout=10).json()
    assert "doomed" not in {e["name"] for e in index}


def test_requests_keep_succeeding_during_version_swap(
    poll_server: Server, poll_dirs: tuple[Path, Path]
) -> None:
    repo, staging = poll_dirs
    with Hammer(poll_server, "busy") as hammer:
        wait_until(lambda: hammer.count(hammer.versions, "1") >= 20, "version 1 answered")
        os.rename(write_version(staging / "busy2", sub_add_model()), repo / "busy" / "2")
        wait_until(lambda: hammer.count(hammer.versions, "2") >= 50, "version 2 answered")
    assert hammer.failures == []
    assert hammer.versions["1"] >= 20
    assert hammer.versions["2"] >= 50
    # Version 1 computed add_sub, version 2 sub_add: nothing else was ever answered.
    assert set(hammer.answers) == {"add_sub", "sub_add"}
    assert status(poll_server, "/v2/models/busy/versions/1/ready") != 200


def test_requests_keep_succeeding_during_in_place_reload(
    poll_server: Server, poll_dirs: tuple[Path, Path]
) -> None:
    """Replacing the file of the version being served swaps it without failures."""
    repo, staging = poll_dirs
    new_file = staging / "in_place_model.onnx"
    onnx.save(sub_add_model(), str(new_file))
    with Hammer(poll_server, "in_place") as hammer:
        wait_until(lambda: hammer.count(hammer.answers, "add_sub") >= 20, "old file answered")
        os.replace(new_file, repo / "in_place" / "1" / "model.onnx")
        wait_until(lambda: hammer.count(hammer.answers, "sub_add") >= 50, "new file answered")
    assert hammer.failures == []
    assert set(hammer.versions) == {"1"}
    r = infer(poll_server, "in_place")
    assert outputs_of(r) == {"OUTPUT0": DIFF, "OUTPUT1": SUM}


# ------------------------------------------------------------ graceful stop


def test_sigterm_when_idle_stops_cleanly(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_version(repo / "add_sub" / "1", add_sub_model())
    srv = start_server(repo, tmp_path / "server.log")
    assert infer(srv, "add_sub").status_code == 200

    started = time.monotonic()
    srv.process.send_signal(signal.SIGTERM)
    try:
        code = srv.process.wait(timeout=10)
    finally:
        stop_server(srv)
    elapsed = time.monotonic() - started
    assert code == 0, srv.log()
    assert elapsed < 5, f"took {elapsed:.1f} s to stop"
    messages = [
        json.loads(line).get("message")
        for line in srv.log().splitlines()
        if line.startswith("{")  # JSON log lines; a library may print plain text too
    ]
    assert "stopped" in messages, srv.log()


# ------------------------------------------------- bundled examples, metrics


@pytest.fixture(scope="module")
def examples_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(None, tmp_path_factory.mktemp("examples_log") / "server.log")
    yield srv
    stop_server(srv)


def test_no_repository_serves_the_examples(examples_server: Server) -> None:
    for name in ("breast_cancer", "digits"):
        assert status(examples_server, f"/v2/models/{name}/ready") == 200
    index = httpx.post(f"{examples_server.base}/v2/repository/index", json={}, timeout=10).json()
    assert {(e["name"], e["version"], e["state"]) for e in index} == {
        ("breast_cancer", "1", "READY"),
        ("digits", "1", "READY"),
    }
    r = httpx.post(
        f"{examples_server.base}/v2/models/breast_cancer/infer",
        content=(SAMPLES / "breast_cancer.json").read_bytes(),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert {o["name"]: o["data"] for o in r.json()["outputs"]}["label"] == [1]


def samples_of(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name`` in a Prometheus text exposition."""
    return [
        (dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def value_of(text: str, name: str, **labels: str) -> float:
    found = [
        v for ls, v in samples_of(text, name) if all(ls.get(k) == x for k, x in labels.items())
    ]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def test_metrics_on_both_ports(examples_server: Server) -> None:
    body = (SAMPLES / "digits.json").read_bytes()
    for _ in range(2):
        r = httpx.post(f"{examples_server.base}/v2/models/digits/infer", content=body, timeout=30)
        assert r.status_code == 200
    bad = httpx.post(
        f"{examples_server.base}/v2/models/digits/infer",
        json={
            "inputs": [{"name": "image", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]
        },
        timeout=30,
    )
    assert bad.status_code == 400
    (spec,) = json.loads(body)["inputs"]
    with grpcclient.InferenceServerClient(examples_server.grpc_url) as c:
        inp = grpcclient.InferInput(spec["name"], spec["shape"], spec["datatype"])
        inp.set_data_from_numpy(np.array(spec["data"], dtype=np.float32).reshape(spec["shape"]))
        assert c.infer("digits", [inp]).as_numpy("label").tolist() == [[5]]

    texts: list[str] = []
    for url in (
        f"{examples_server.base}/metrics",
        f"http://127.0.0.1:{examples_server.metrics_port}/metrics",
    ):
        r = httpx.get(url, timeout=10)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        texts.append(r.text)

    for text in texts:
        assert "modelport_inference_requests_total" in text
        http_labels = {"model": "digits", "version": "1", "protocol": "http"}
        grpc_labels = {"model": "digits", "version": "1", "protocol": "grpc"}
        # Requests count every request that reached the model, failed ones too.
        assert value_of(text, "modelport_inference_requests_total", **http_labels) == 3
        assert value_of(text, "modelport_inference_requests_total", **grpc_labels) == 1
        assert (
            value_of(
                text, "modelport_inference_failures_total", **http_labels, reason="InvalidRequest"
            )
            == 1
        )
        buckets = [
            (labels, v)
            for labels, v in samples_of(text, "modelport_request_duration_seconds_bucket")
            if all(labels.get(k) == x for k, x in http_labels.items())
        ]
        assert len(buckets) >= 2
        counts = [v for _, v in sorted(buckets, key=lambda b: float(b[0]["le"]))]
        assert counts == sorted(counts), "cumulative buckets never decrease"
        assert (
            value_of(text, "modelport_request_duration_seconds_bucket", le="+Inf", **http_labels)
            == 2
        )
        assert value_of(text, "modelport_request_duration_seconds_count", **http_labels) == 2
        assert value_of(text, "modelport_request_duration_seconds_count", **grpc_labels) == 1
        assert value_of(text, "modelport_models_loaded") == 2
        assert "breast_cancer" not in {
            labels["model"] for labels, _ in samples_of(text, "modelport_inference_failures_total")
        }


def test_metrics_port_serves_only_metrics(examples_server: Server) -> None:
    base = f"http://127.0.0.1:{examples_server.metrics_port}"
    r = httpx.get(f"{base}/v2/health/ready", timeout=10)
    assert r.status_code == 404
    assert "error" in r.json()


# ------------------------------------------------------ config precedence


def test_flag_overrides_config_file(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_version(repo / "add_sub" / "1", add_sub_model())
    file_port = free_port()
    config = tmp_path / "server.yaml"
    config.write_text(f"http_port: {file_port}\nmax_body_bytes: 2000\n")
    srv = start_server(repo, tmp_path / "server.log", "--config", str(config))
    try:
        # start_server passed --http-port: the server answers there, not on the file's port.
        assert status(srv, "/v2/health/ready") == 200
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{file_port}/v2/health/ready", timeout=2)
        # Settings the flags leave alone still come from the file.
        assert infer(srv, "add_sub").status_code == 200
        big = httpx.post(f"{srv.base}/v2/models/add_sub/infer", content=b" " * 5000, timeout=10)
        assert big.status_code == 413
    finally:
        stop_server(srv)


def test_invalid_log_level_env_exits_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    env["MODELPORT_LOG_LEVEL"] = "chatty"
    command = [sys.executable, "-m", "modelport", "serve", str(repository_path())]
    for flag in ("--http-port", "--grpc-port", "--metrics-port"):
        command += [flag, str(free_port())]
    done = subprocess.run(command, env=env, capture_output=True, timeout=30, check=False)
    assert done.returncode == 2, done.stderr.decode()
    assert "MODELPORT_LOG_LEVEL" in done.stderr.decode()


def test_log_level_flag_overrides_invalid_env(tmp_path: Path) -> None:
    port = free_port()
    args = [
        str(repository_path()),
        "--http-port", str(port),
        "--grpc-port", str(free_port()),
        "--metrics-port", str(free_port()),
        "--log-level", "warning",
    ]  # fmt: skip
    proc = spawn(args, {"MODELPORT_LOG_LEVEL": "chatty"}, tmp_path / "server.log", port)
    assert terminate(proc) == 0


def test_env_overrides_config_file(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("log_level: chatty\n")
    port = free_port()
    args = [
        str(repository_path()),
        "--config", str(config),
        "--http-port", str(port),
        "--grpc-port", str(free_port()),
        "--metrics-port", str(free_port()),
    ]  # fmt: skip
    proc = spawn(args, {"MODELPORT_LOG_LEVEL": "info"}, tmp_path / "server.log", port)
    assert terminate(proc) == 0


def test_unknown_setting_in_config_file_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("http_prot: 1234\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    command = [sys.executable, "-m", "modelport", "serve", "--config", str(config)]
    for flag in ("--http-port", "--grpc-port", "--metrics-port"):
        command += [flag, str(free_port())]
    done = subprocess.run(command, env=env, capture_output=True, timeout=30, check=False)
    assert done.returncode == 2, done.stderr.decode()
    err = done.stderr.decode()
    assert "http_prot" in err
    assert str(config) in err


def test_missing_repository_exits_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    missing = tmp_path / "no_such_repository"
    command = [sys.executable, "-m", "modelport", "serve", str(missing)]
    for flag in ("--http-port", "--grpc-port", "--metrics-port"):
        command += [flag, str(free_port())]
    done = subprocess.run(command, env=env, capture_output=True, timeout=30, check=False)
    assert done.returncode == 2, done.stderr.decode()
    assert str(missing) in done.stderr.decode()
