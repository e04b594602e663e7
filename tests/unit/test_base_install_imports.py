"""The server starts on the base install: extras are imported only where they are used.

`make serve` on a fresh machine installs modelport without extras; a module
the server imports at start that imports an extra at its top (psycopg for a
PostgreSQL store, pyarrow for parquet, Envoy's package for the gateway)
would crash every server that does not use it.
"""

from __future__ import annotations

import subprocess
import sys

EXTRAS = ("psycopg", "pyarrow", "envoy", "redis", "sklearn", "torch", "xgboost", "lightgbm")


def test_importing_the_server_and_the_cli_imports_no_extra() -> None:
    code = (
        "import sys, modelport.server, modelport.cli.main, modelport.gateway.app\n"
        f"print(','.join(m for m in {EXTRAS!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == ""
