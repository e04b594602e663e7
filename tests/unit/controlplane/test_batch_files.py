"""Batch jobs reach only files under batch_dir: relative names, no '..', links resolved."""

from __future__ import annotations

import re
import sys
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


def test_jsonl_csv_and_parquet_only(files: BatchFiles) -> None:
    assert files.kind(Path("a.jsonl"), "a.jsonl", "input") == "jsonl"
    assert files.kind(Path("a.CSV"), "a.CSV", "output") == "csv"
    with pytest.raises(InvalidRequest, match=re.escape("must be .jsonl, .csv or .parquet")):
        files.kind(Path("a.txt"), "a.txt", "input")


def test_parquet_with_pyarrow_named_without(
    files: BatchFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pyarrow")
    assert files.kind(Path("a.parquet"), "a.parquet", "input") == "parquet"
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    with pytest.raises(InvalidRequest, match="cannot read or write parquet"):
        files.kind(Path("a.parquet"), "a.parquet", "output")
