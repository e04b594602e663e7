"""Sealed models served by the real server: the right key, a wrong key, tampering.

The repository is a copy of the bundled examples with ``digits`` sealed by
``modelport encrypt`` and a plaintext copy of it, ``digits_plain``, to
compare answers with. Each server here is the module's own.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from modelport.examples import repository_path
from tests.integration.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.integration


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelport", *args],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("keys")
    right, wrong = folder / "right.key", folder / "wrong.key"
    for path in (right, wrong):
        done = _cli("keygen", "-o", str(path))
        assert done.returncode == 0, done.stderr
    return right, wrong


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> Path:
    root = tmp_path_factory.mktemp("sealed_repo") / "repo"
    shutil.copytree(repository_path(), root)
    for name in ("digits_plain", "digits_tamper", "digits_replay"):
        shutil.copytree(root / "digits", root / name)
    for name in ("digits", "digits_tamper", "digits_replay"):
        done = _cli("encrypt", str(root / name / "1"), "--master-key-file", str(keys[0]))
        assert done.returncode == 0, done.stderr
        assert "sealed 1 file(s)" in done.stdout
    assert not (root / "digits" / "1" / "model.onnx").exists()
    return root


@pytest.fixture(scope="module")
def right(
    repo: Path, keys: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("right_log") / "server.log"
    srv = start_server(repo, log, "--master-key-file", str(keys[0]))
    yield srv
    stop_server(srv)


def _index(server: Server) -> dict[str, tuple[str, str]]:
    entries = httpx.post(f"{server.base}/v2/repository/index", json={}, timeout=30).json()
    return {e["name"]: (e["state"], e.get("reason", "")) for e in entries}


def _infer(server: Server, model: str, image: np.ndarray) -> dict[str, np.ndarray]:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        tensor = httpclient.InferInput("image", list(image.shape), "FP32")
        tensor.set_data_from_numpy(image)
        result = client.infer(model, [tensor])
        return {name: result.as_numpy(name) for name in ("label", "probabilities")}
    finally:
        client.close()


def test_sealed_model_answers_like_the_plaintext_one(right: Server) -> None:
    index = _index(right)
    assert index["digits"] == ("READY", "")
    image = np.random.default_rng(0).uniform(0, 16, size=(5, 64)).astype(np.float32)
    sealed, plain = _infer(right, "digits", image), _infer(right, "digits_plain", image)
    np.testing.assert_array_equal(sealed["label"], plain["label"])
    np.testing.assert_array_equal(sealed["probabilities"], plain["probabilities"])


def _load(server: Server, model: str) -> httpx.Response:
    return httpx.post(f"{server.base}/v2/repository/models/{model}/load", timeout=60)


def test_tampered_file_fails_its_load_and_the_server_serves_on(right: Server, repo: Path) -> None:
    sealed = repo / "digits_tamper" / "1" / "model.onnx.sealed"
    data = bytearray(sealed.read_bytes())
    data[100] ^= 0x40
    sealed.write_bytes(bytes(data))
    # While a copy is loaded, a failed reload leaves it serving and says why; the
    # load itself answers an error, as Triton's does.
    reloaded = _load(right, "digits_tamper")
    assert reloaded.status_code == 400
    assert "reload failed, previous copy serving" in reloaded.json()["error"]
    state, reason = _index(right)["digits_tamper"]
    assert state == "READY"
    assert "reload failed, previous copy serving" in reason
    assert "model.onnx.sealed: authentication failed" in reason
    # Without a loaded copy, the load itself is refused.
    unloaded = httpx.post(f"{right.base}/v2/repository/models/digits_tamper/unload", timeout=60)
    assert unloaded.status_code == 200
    answer = _load(right, "digits_tamper")
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert "digits_tamper" in error
    assert "model.onnx.sealed: authentication failed" in error
    # A load that failed counts against strict readiness; the other models serve on.
    assert httpx.get(f"{right.base}/v2/health/ready", timeout=5).status_code == 503
    image = np.zeros((1, 64), dtype=np.float32)
    assert _infer(right, "digits", image)["label"].shape == (1, 1)


def test_file_replayed_from_another_model_is_refused(right: Server, repo: Path) -> None:
    unloaded = httpx.post(f"{right.base}/v2/repository/models/digits_replay/unload", timeout=60)
    assert unloaded.status_code == 200
    shutil.copyfile(
        repo / "digits" / "1" / "model.onnx.sealed",
        repo / "digits_replay" / "1" / "model.onnx.sealed",
    )
    answer = _load(right, "digits_replay")
    assert answer.status_code == 400
    assert "sealed for another file, version or model" in answer.json()["error"]
    assert _index(right)["digits"] == ("READY", "")


def test_wrong_key_fails_only_the_sealed_models(
    repo: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    srv = start_server(repo, tmp_path / "server.log", "--master-key-file", str(keys[1]))
    try:
        index = _index(srv)
        state, reason = index["digits"]
        assert state == "UNAVAILABLE"
        assert "wrong key" in reason
        assert index["breast_cancer"] == ("READY", "")
        assert index["digits_plain"] == ("READY", "")
        answer = httpx.post(f"{srv.base}/v2/models/digits/infer", json={"inputs": []}, timeout=5)
        assert answer.status_code in (400, 503)
        assert "wrong key" in answer.json()["error"]
        log = srv.log()
    finally:
        stop_server(srv)
    for path in keys:
        secret = path.read_text().strip()
        assert secret not in log
        assert secret not in reason
        assert base64.b64decode(secret).hex() not in log
