"""KServe v1's model listing and the CLI's version, through the real server and command."""

from __future__ import annotations

import subprocess
import sys

import httpx

from modelport import __version__
from tests.integration.conftest import Server


def test_v1_models_lists_the_ready_models_and_only_them(server: Server) -> None:
    listing = httpx.get(f"{server.base}/v1/models", timeout=10)
    assert listing.status_code == 200
    names = listing.json()["models"]
    assert names == sorted(names) and len(names) == len(set(names))
    index = httpx.post(f"{server.base}/v2/repository/index", json={}, timeout=10).json()
    ready = {e["name"] for e in index if e.get("state") == "READY"}
    assert set(names) == ready
    not_ready = {e["name"] for e in index} - ready
    assert not_ready  # the session repository holds broken models on purpose
    assert not (not_ready & set(names))
    # Each name it lists answers its own status route.
    for name in names:
        assert httpx.get(f"{server.base}/v1/models/{name}", timeout=10).json()["ready"] is True


def test_v1_models_answers_get_only(server: Server) -> None:
    r = httpx.post(f"{server.base}/v1/models", json={}, timeout=10)
    assert r.status_code == 405


def test_the_cli_prints_its_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modelport", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"modelport {__version__}"
