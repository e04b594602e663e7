"""A configuration change never leaves a route naming a cluster Envoy lacks (Gateway._apply)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from modelport.gateway.app import Gateway
from modelport.gateway.envoy_config import CDS_FILE, Listen, XdsWriter
from modelport.gateway.fleet import parse_fleet

ROUTES = "rds_http.json"


def cds(*names: str) -> dict[str, Any]:
    return {"resources": [{"name": n} for n in names]}


def routes(*names: str) -> dict[str, Any]:
    return {"resources": [{"routes": [{"route": {"cluster": n}} for n in names]}]}


def on_disk(folder: Path, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((folder / name).read_text())
    return loaded


async def _apply_in_order(folder: Path) -> list[str]:
    spec = parse_fleet({"regions": ["ae-dxb"]}, "fleet.yaml", folder)
    gateway = Gateway(spec, Listen(admin_port=1))
    writer = XdsWriter(folder)
    writer.write({CDS_FILE: cds("old"), ROUTES: routes("old"), "eds/old.json": {"e": 1}})
    seen: list[str] = []

    def admin(request: httpx.Request) -> httpx.Response:
        # What Envoy sees when it is asked whether the new cluster is warm: the files as
        # they are at that moment. It is warm from the second question on.
        seen.append("asked")
        assert on_disk(folder, CDS_FILE) == cds("new", "old")  # both clusters while warming
        assert on_disk(folder, ROUTES) == routes("old")  # the routes have not moved yet
        assert (folder / "eds/new.json").exists()
        active = ["old", "new"] if len(seen) > 1 else ["old"]
        return httpx.Response(200, json={"cluster_statuses": [{"name": n} for n in active]})

    async with httpx.AsyncClient(transport=httpx.MockTransport(admin)) as client:
        await gateway._apply(
            writer,
            {CDS_FILE: cds("new"), ROUTES: routes("new"), "eds/new.json": {"e": 2}},
            client,
        )
    return seen


def test_clusters_warm_before_routes_move_and_old_ones_go_last(tmp_path: Path) -> None:
    seen = asyncio.run(_apply_in_order(tmp_path))
    assert seen == ["asked", "asked"]  # routes waited for the second answer
    assert on_disk(tmp_path, CDS_FILE) == cds("new")  # the old cluster is gone at the end
    assert on_disk(tmp_path, ROUTES) == routes("new")
    assert not (tmp_path / "eds/old.json").exists()
    assert (tmp_path / "eds/new.json").exists()
