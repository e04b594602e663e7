from __future__ import annotations

import pytest

from modelport.config.model import parse_model_config
from modelport.errors import ConfigError


def test_triton_fields_parse_with_enum_names() -> None:
    config = parse_model_config(
        {
            "max_batch_size": 8,
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [16]}],
            "output": [{"name": "y", "data_type": "TYPE_STRING", "dims": [-1]}],
            "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
            "version_policy": {"specific": {"versions": [1, 3]}},
            "parameters": {"intra_op_thread_count": {"string_value": "2"}},
            "dynamic_batching": {"max_queue_delay_microseconds": 100, "preferred_batch_size": [4]},
        },
        "m/config.yaml",
    )
    assert config.max_batch_size == 8
    assert config.instance_group[0].count == 2
    assert config.parameter("intra_op_thread_count") == "2"
    assert config.version_policy.select([1, 2, 3, 4]) == [1, 3]
    as_json = config.to_json()
    assert as_json["input"][0]["data_type"] == "TYPE_FP32"
    assert as_json["dynamic_batching"]["preferred_batch_size"] == [4]
    assert "sequence_batching" not in as_json


@pytest.mark.parametrize(
    ("policy", "available", "expected"),
    [
        ({}, [1, 2, 3], [3]),
        ({"latest": {"num_versions": 2}}, [3, 1, 2], [2, 3]),
        ({"all": {}}, [2, 1], [1, 2]),
        ({"specific": {"versions": [2, 9]}}, [1, 2, 3], [2]),
    ],
)
def test_version_policy_selects(
    policy: dict[str, object], available: list[int], expected: list[int]
) -> None:
    config = parse_model_config({"version_policy": policy}, "c")
    assert config.version_policy.select(available) == expected


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"batch_key": "x"}, "batch_key", "modelport:"),
        (
            {"input": [{"name": "x", "data_type": "TYPE_FLOAT", "dims": [1]}]},
            "input[0].data_type",
            "TYPE_FLOAT",
        ),
        (
            {"input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [0]}]},
            "input[0].dims",
            "positive",
        ),
        ({"max_batch_size": -1}, "max_batch_size", "greater than or equal"),
        ({"instance_group": [{"kind": "KIND_TPU"}]}, "instance_group[0].kind", "KIND_CPU"),
        (
            {"version_policy": {"latest": {"num_versions": 1}, "all": {}}},
            "version_policy",
            "one of",
        ),
        ({"modelport": {"unknown": 1}}, "modelport.unknown", "unknown field"),
    ],
)
def test_errors_name_file_and_field(data: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_model_config(data, "repo/m/config.yaml")
    assert info.value.source == "repo/m/config.yaml"
    assert info.value.field == field
    assert words in info.value.message


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_model_config([1, 2], "c.yaml")
