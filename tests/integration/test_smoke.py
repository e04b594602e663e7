from __future__ import annotations

import httpx

from tests.integration.conftest import Server


def test_server_metadata_lists_extensions(server: Server) -> None:
    r = httpx.get(f"{server.base}/v2")
    assert r.status_code == 200
    assert "binary_tensor_data" in r.json()["extensions"]
