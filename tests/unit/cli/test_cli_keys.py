"""``modelport keys list``: a table for people, ``--json`` for scripts, never a secret."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from modelport.cli.main import app
from modelport.controlplane.keys import KeyService
from modelport.controlplane.store import Database, KeyStore


def keys_list(data: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["keys", "list", "--data-dir", str(data), *extra])
    return result.exit_code, result.stdout


def test_no_keys_says_so(tmp_path: Path) -> None:
    assert keys_list(tmp_path) == (0, "no keys\n")
    code, out = keys_list(tmp_path, "--json")
    assert code == 0 and json.loads(out) == {"keys": []}


def test_keys_as_a_table_and_as_json(tmp_path: Path) -> None:
    past = datetime.now(UTC) - timedelta(days=2)
    with Database.open(Database.sqlite_url(tmp_path)) as database:
        service = KeyService(KeyStore(database))
        _, ops = service.create(
            role="operator", models=["fraud-*"], actor="t", name="ops-bot", tenant="acme"
        )
        _, gone = service.create(role="admin", models=["*"], actor="t", rate=5, burst=10)
        service.revoke(gone.split("_")[1], actor="t")
    with Database.open(Database.sqlite_url(tmp_path), clock=lambda: past) as database:
        _, old = KeyService(KeyStore(database), lambda: past).create(
            role="viewer", models=["*"], actor="t", expires="1d"
        )
    code, out = keys_list(tmp_path)
    assert code == 0
    header, _, *rows = out.splitlines()
    assert header.split() == ["ID", "NAME", "ROLE", "SCOPE", "EXPIRES", "STATE"]
    by_id = {row.split()[0]: row for row in rows}
    ops_row = by_id[ops.split("_")[1]]
    assert "ops-bot" in ops_row and "fraud-*; tenant acme" in ops_row
    assert ops_row.split()[-2:] == ["never", "active"]
    assert by_id[gone.split("_")[1]].split()[-1] == "revoked"
    assert "5/s burst 10" in by_id[gone.split("_")[1]]
    expired = by_id[old.split("_")[1]].split()
    assert expired[-1] == "expired" and expired[-2].endswith("Z")
    code, out = keys_list(tmp_path, "--json")
    listed = {k["id"]: k for k in json.loads(out)["keys"]}
    entry = listed[ops.split("_")[1]]
    assert entry["name"] == "ops-bot" and entry["models"] == ["fraud-*"]
    assert entry["state"] == "active" and entry["created_at"].endswith("Z")
    assert {k["state"] for k in listed.values()} == {"active", "revoked", "expired"}
    for token in (ops, gone, old):
        secret = token.split("_", 2)[2]
        assert secret not in out and "salt" not in out and "hash" not in out
