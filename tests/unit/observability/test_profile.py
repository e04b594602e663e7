"""Reference profiles: built from samples, loaded with checks, counting outliers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelport.errors import ConfigError
from modelport.observability.profile import (
    ALL_FEATURES,
    PROFILE_FILE,
    InputProfile,
    build_profile,
    load_profile,
)


def write(tmp_path: Path, samples: dict[str, np.ndarray]) -> Path:
    path = tmp_path / PROFILE_FILE
    path.write_text(json.dumps(build_profile(samples)))
    return path


def test_values_inside_the_profile_are_not_counted(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(5000, 4)).astype(np.float32)
    profile = InputProfile.load(write(tmp_path, {"x": train}))
    assert profile.outliers({"x": rng.normal(size=(64, 4)).astype(np.float32)}) == []


def test_a_feature_far_outside_is_counted_by_feature(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    profile = InputProfile.load(write(tmp_path, {"x": rng.normal(size=(5000, 4))}))
    batch = np.zeros((3, 4), dtype=np.float32)
    batch[:, 2] = 1000.0  # a unit mistake on feature 2, in every row
    batch[0, 0] = -1000.0
    assert sorted(profile.outliers({"x": batch})) == [("x", "0", 1), ("x", "2", 3)]


def test_wide_inputs_are_counted_as_a_whole(tmp_path: Path) -> None:
    images = np.zeros((100, 3, 16, 16), dtype=np.float32)
    profile = InputProfile.load(write(tmp_path, {"image": images}))
    probe = np.zeros((2, 3, 16, 16), dtype=np.float32)
    probe[1, 0, 0, :4] = 50.0
    assert profile.outliers({"image": probe}) == [("image", ALL_FEATURES, 4)]


def test_inputs_of_another_shape_or_kind_are_ignored(tmp_path: Path) -> None:
    profile = InputProfile.load(write(tmp_path, {"x": np.ones((10, 4))}))
    assert profile.outliers({"x": np.full((2, 5), 1e9)}) == []
    assert profile.outliers({"other": np.full((2, 4), 1e9)}) == []
    text = build_profile({"t": np.array([b"a", b"b"], dtype=object)})
    assert text["inputs"] == {}


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("not json", ""),
        (json.dumps({"format": 9}), "format"),
        (json.dumps({"format": 1, "inputs": []}), "inputs"),
        (json.dumps({"format": 1, "inputs": {"x": {"low": [1, 2], "high": [0, 3]}}}), "inputs.x"),
        (json.dumps({"format": 1, "inputs": {"x": {"low": ["a"], "high": [1]}}}), "inputs.x"),
    ],
)
def test_bad_profiles_name_the_file_and_field(tmp_path: Path, content: str, field: str) -> None:
    path = tmp_path / PROFILE_FILE
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        InputProfile.load(path)
    assert str(path) in caught.value.message
    assert field in caught.value.message


def test_a_version_without_a_profile_has_none(tmp_path: Path) -> None:
    assert load_profile(tmp_path) is None
    write(tmp_path, {"x": np.ones((3, 2))})
    assert load_profile(tmp_path) is not None
