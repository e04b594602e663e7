"""Unit tests stay fast: one that runs for more than ``UNIT_LIMIT_S`` fails, naming its time.

Anything slower is an integration test (a real server, real sleeps) and
belongs in tests/integration.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

UNIT_LIMIT_S = 5.0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[Any]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.when == "call" and report.passed and report.duration > UNIT_LIMIT_S:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} took {report.duration:.1f} s; a unit test must finish within "
            f"{UNIT_LIMIT_S:g} s (a slower one belongs in tests/integration)"
        )
