"""Sample data: --data files matched to the signature with every mismatch named; synthetic rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelport.optimize.convert.errors import ConversionFailed
from modelport.optimize.convert.samples import match_samples, read_data_file, synthetic_samples
from modelport.types import ModelSignature, TensorSpec

ONE = ModelSignature(
    inputs=(TensorSpec("input", "FP32", (-1, 4)),),
    outputs=(TensorSpec("label", "INT64", (-1, 1)),),
    max_batch_size=64,
)
TWO = ModelSignature(
    inputs=(TensorSpec("ids", "INT64", (-1, 3)), TensorSpec("mask", "BOOL", (-1, 3))),
    outputs=(TensorSpec("y", "FP32", (-1, 1)),),
    max_batch_size=8,
)


def test_npz_arrays_are_matched_by_name_and_cast(tmp_path: Path) -> None:
    path = tmp_path / "rows.npz"
    np.savez(path, ids=np.arange(6).reshape(2, 3), mask=np.ones((2, 3), dtype=bool))
    samples = match_samples(read_data_file(path), TWO, str(path))
    assert samples.rows == 2
    assert not samples.synthetic
    assert samples.arrays["ids"].dtype == np.int64
    assert samples.arrays["mask"].dtype == np.bool_


def test_npy_and_csv_feed_a_single_input(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.save(tmp_path / "rows.npy", x)
    (tmp_path / "rows.csv").write_text("a,b,c,d\n" + "\n".join(",".join(map(str, r)) for r in x))
    for name in ("rows.npy", "rows.csv"):
        samples = match_samples(read_data_file(tmp_path / name), ONE, name)
        assert samples.arrays["input"].dtype == np.float32
        np.testing.assert_array_equal(samples.arrays["input"], x.astype(np.float32))


def test_missing_and_extra_arrays_are_named(tmp_path: Path) -> None:
    path = tmp_path / "rows.npz"
    np.savez(path, ids=np.zeros((2, 3)), masks=np.zeros((2, 3)))
    with pytest.raises(ConversionFailed) as err:
        match_samples(read_data_file(path), TWO, str(path))
    assert "no array for input 'mask'" in err.value.message
    assert "array 'masks' is not an input" in err.value.message


def test_an_unnamed_array_for_a_model_with_several_inputs_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "rows.npy", np.zeros((2, 3)))
    with pytest.raises(ConversionFailed, match=r"2 inputs \(ids, mask\); use .npz"):
        match_samples(read_data_file(tmp_path / "rows.npy"), TWO, "rows.npy")


def test_shapes_types_and_row_counts_are_checked() -> None:
    with pytest.raises(ConversionFailed, match=r"'input' has shape \[2, 5\].*\[-1, 4\]"):
        match_samples({"input": np.zeros((2, 5))}, ONE, "rows.npz")
    with pytest.raises(ConversionFailed, match="'input' holds <U1 values, but the input is FP32"):
        match_samples({"input": np.full((2, 4), "a")}, ONE, "rows.npz")
    with pytest.raises(ConversionFailed, match="'ids' holds fractional numbers"):
        match_samples({"ids": np.full((2, 3), 0.5), "mask": np.zeros((2, 3), bool)}, TWO, "d")
    with pytest.raises(ConversionFailed, match=r"different numbers of rows \(ids: 2, mask: 3\)"):
        match_samples({"ids": np.zeros((2, 3)), "mask": np.zeros((3, 3), bool)}, TWO, "d")
    with pytest.raises(ConversionFailed, match="holds no rows"):
        match_samples({"input": np.zeros((0, 4))}, ONE, "rows.npz")


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConversionFailed, match=r"unknown file type '\.parquet'"):
        read_data_file(tmp_path / "rows.parquet")
    with pytest.raises(ConversionFailed, match="no such file"):
        read_data_file(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ConversionFailed, match=r"bad\.npz: cannot read"):
        read_data_file(tmp_path / "bad.npz")
    objects = np.array([{"a": 1}], dtype=object)
    np.save(tmp_path / "objects.npy", objects, allow_pickle=True)
    with pytest.raises(ConversionFailed, match=r"objects\.npy: cannot read"):
        read_data_file(tmp_path / "objects.npy")


def test_synthetic_rows_follow_the_signature_and_repeat() -> None:
    text = ModelSignature(
        inputs=(TensorSpec("text", "BYTES", (-1, 1)),),
        outputs=(TensorSpec("label", "INT64", (-1, 1)),),
        max_batch_size=4,
    )
    a, b = synthetic_samples(TWO), synthetic_samples(TWO)
    assert a.synthetic
    assert a.arrays["ids"].shape == (256, 3) and a.arrays["ids"].dtype == np.int64
    assert a.arrays["mask"].dtype == np.bool_
    np.testing.assert_array_equal(a.arrays["ids"], b.arrays["ids"])
    words = synthetic_samples(text).arrays["text"]
    assert isinstance(words[0, 0], bytes)
    unbatched = ModelSignature(
        inputs=(TensorSpec("x", "FP32", (2, -1)),), outputs=(), max_batch_size=0
    )
    one = synthetic_samples(unbatched)
    assert one.rows == 1
    assert one.arrays["x"].shape == (2, 4)
