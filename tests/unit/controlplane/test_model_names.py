"""Model names that may and may not name a directory in the repository."""

from __future__ import annotations

import pytest

from modelport.controlplane.repository.layout import check_model_name
from modelport.errors import InvalidRequest


@pytest.mark.parametrize("name", ["digits", "fraud-1", "a.b_c", "9lives", "x" * 128])
def test_plain_names_pass(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        "a..b",
        ".hidden",
        "-flag",
        "a/b",
        "a\\b",
        "a\x00b",
        "digits\n",
        "digits\r\n",
        " digits",
        "x" * 129,
    ],
)
def test_tricks_are_refused_with_the_rule(name: str) -> None:
    with pytest.raises(InvalidRequest, match="is not allowed: use letters, digits"):
        check_model_name(name)
