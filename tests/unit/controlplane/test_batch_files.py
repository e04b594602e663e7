"""Batch jobs reach only files under batch_dir: relative names, no '..', links resolved."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modelport.controlplane.batch_jobs import BatchFiles
from modelport.errors import InvalidRequest


@pytest.fixture
def files(tmp_path: Path) -> BatchFiles:
    root = tmp_path / "batches"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "escape").symlink_to(tmp_path / "outside")
    (root / "inner").symlink_to(root / "sub")
    return BatchFiles(root)


@pytest.mark.parametrize("name", ["in.jsonl", "sub/in.csv", "inner/in.jsonl", "./in.jsonl"])
def test_names_under_the_root_are_resolved_inside_it(files: BatchFiles, name: str) -> None:
    path = files.path(name, "input")
    assert path.is_relative_to(files.root.resolve())


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../in.jsonl", "relative to the server's batch_dir, without '..'"),
        ("sub/../../in.jsonl", "without '..'"),
        ("/etc/passwd", "relative to the server's batch_dir"),
        ("escape/in.jsonl", "leads outside the server's batch_dir"),
        (".", "leads outside"),
        ("", "is not a file name"),
        ("a\x00b.jsonl", "is not a file name"),
    ],
)
def test_names_leaving_the_root_are_refused(files: BatchFiles, name: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(why)):
        files.path(name, "input")


def test_only_jsonl_and_csv(files: BatchFiles) -> None:
    assert files.kind(Path("a.jsonl"), "a.jsonl", "input") == "jsonl"
    assert files.kind(Path("a.CSV"), "a.CSV", "output") == "csv"
    with pytest.raises(InvalidRequest, match=re.escape("must be .jsonl or .csv")):
        files.kind(Path("a.txt"), "a.txt", "input")
