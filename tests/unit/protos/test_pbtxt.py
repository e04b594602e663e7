"""Reading Triton ``config.pbtxt`` files through the generated ModelConfig.

These tests must not import tritonclient: its generated modules register the
same ``inference.*`` names in the default descriptor pool as ours.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from modelport.config.pbtxt import config_to_proto, read_pbtxt
from modelport.errors import ConfigError
from modelport.protos import model_config_pb2

# A config in the shapes real Triton repositories use: both list spellings,
# "name: value" and "name { }" nesting, optional colons, comments.
REALISTIC = """
# ONNX classifier served on CPU
name: "resnet"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { specific { versions: [1, 3] } }
input [
  {
    name: "x"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, -1 ]
    reshape { shape: [ 1, 3, 224, -1 ] }
  }
]
input {
  name: "mask"
  data_type: TYPE_BOOL
  dims: 16
  optional: true
}
output [
  {
    name: "probs"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    label_filename: "labels.txt"
  }
]
instance_group [
  { count: 2 kind: KIND_CPU },
  { name: "gpu_group" count: 1 kind: KIND_GPU gpus: [ 0, 1 ] }
]
dynamic_batching {
  max_queue_delay_microseconds: 100
  preferred_batch_size: [ 4, 8 ]
  default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 5000000 }
  priority_levels: 2
  priority_queue_policy {
    key: 1
    value: { max_queue_size: 16 }
  }
}
optimization {
  graph { level: 1 }
  execution_accelerators {
    gpu_execution_accelerator : [
      { name : "tensorrt" parameters { key: "precision_mode" value: "FP16" } }
    ]
    cpu_execution_accelerator : [ { name : "openvino" } ]
  }
}
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
parameters: { key: "execution_mode" value: { string_value: "0" } }
model_warmup [
  {
    name: "zeros"
    batch_size: 4
    count: 2
    inputs {
      key: "x"
      value: { data_type: TYPE_FP32 dims: [ 3, 224, 224 ] zero_data: true }
    }
  }
]
response_cache { enable: true }
model_transaction_policy { decoupled: false }
"""


@pytest.fixture(scope="module")
def parsed() -> dict[str, Any]:
    return read_pbtxt(REALISTIC, "models/resnet/config.pbtxt")


def test_top_level_scalars(parsed: dict[str, Any]) -> None:
    assert parsed["name"] == "resnet"
    assert parsed["platform"] == "onnxruntime_onnx"
    assert parsed["max_batch_size"] == 8


def test_inputs_keep_order_and_have_int_dims_and_enum_names(parsed: dict[str, Any]) -> None:
    x, mask = parsed["input"]
    assert x["name"] == "x"
    assert x["data_type"] == "TYPE_FP32"
    assert x["format"] == "FORMAT_NCHW"
    assert x["dims"] == [3, 224, -1]
    assert all(type(d) is int for d in x["dims"])
    assert x["reshape"] == {"shape": [1, 3, 224, -1]}
    # A single value for a repeated field is accepted, as Triton does.
    assert mask == {"name": "mask", "data_type": "TYPE_BOOL", "dims": [16], "optional": True}


def test_output(parsed: dict[str, Any]) -> None:
    assert parsed["output"] == [
        {
            "name": "probs",
            "data_type": "TYPE_FP32",
            "dims": [1000],
            "label_filename": "labels.txt",
        }
    ]


def test_instance_groups_are_a_list_of_mappings(parsed: dict[str, Any]) -> None:
    assert parsed["instance_group"] == [
        {"count": 2, "kind": "KIND_CPU"},
        {"name": "gpu_group", "count": 1, "kind": "KIND_GPU", "gpus": [0, 1]},
    ]


def test_dynamic_batching_int64_fields_are_ints(parsed: dict[str, Any]) -> None:
    batching = parsed["dynamic_batching"]
    assert batching["max_queue_delay_microseconds"] == 100
    assert type(batching["max_queue_delay_microseconds"]) is int
    assert batching["preferred_batch_size"] == [4, 8]
    assert batching["priority_levels"] == 2
    assert batching["default_queue_policy"] == {
        "timeout_action": "DELAY",
        "default_timeout_microseconds": 5_000_000,
    }
    # uint64 map keys come back as ints too.
    assert batching["priority_queue_policy"] == {1: {"max_queue_size": 16}}


def test_version_policy(parsed: dict[str, Any]) -> None:
    assert parsed["version_policy"] == {"specific": {"versions": [1, 3]}}


def test_optimization_accelerators(parsed: dict[str, Any]) -> None:
    optimization = parsed["optimization"]
    assert optimization["graph"] == {"level": 1}
    accelerators = optimization["execution_accelerators"]
    assert accelerators["gpu_execution_accelerator"] == [
        {"name": "tensorrt", "parameters": {"precision_mode": "FP16"}}
    ]
    assert accelerators["cpu_execution_accelerator"] == [{"name": "openvino"}]


def test_parameters_map_keeps_string_values_as_strings(parsed: dict[str, Any]) -> None:
    assert parsed["parameters"] == {
        "intra_op_thread_count": {"string_value": "2"},
        "execution_mode": {"string_value": "0"},
    }


def test_warmup_and_small_sections(parsed: dict[str, Any]) -> None:
    assert parsed["model_warmup"] == [
        {
            "name": "zeros",
            "batch_size": 4,
            "count": 2,
            "inputs": {"x": {"data_type": "TYPE_FP32", "dims": [3, 224, 224], "zero_data": True}},
        }
    ]
    assert parsed["response_cache"] == {"enable": True}
    # Defaults are omitted, so a section holding only defaults is empty.
    assert parsed["model_transaction_policy"] == {}


def test_fields_newer_than_tritonclient_parse() -> None:
    text = """
    backend: "pytorch"
    runtime: "model.py"
    input [ { name: "a" data_type: TYPE_FP16 dims: [ 2 ] is_non_linear_format_io: true } ]
    model_metrics {
      metric_control [
        {
          metric_identifier { family: "nv_inference_first_response_histogram_ms" }
          histogram_options { buckets: [ 1, 10, 100 ] }
        }
      ]
    }
    """
    parsed = read_pbtxt(text, "cfg")
    assert parsed["runtime"] == "model.py"
    assert parsed["input"][0]["is_non_linear_format_io"] is True
    control = parsed["model_metrics"]["metric_control"][0]
    assert control["histogram_options"]["buckets"] == [1.0, 10.0, 100.0]


def test_ensemble_model_version_is_int() -> None:
    text = """
    platform: "ensemble"
    ensemble_scheduling {
      step [
        { model_name: "pre" model_version: -1 input_map { key: "IN" value: "raw" } },
        { model_name: "net" model_version: 3 output_map { key: "OUT" value: "y" } }
      ]
    }
    """
    steps = read_pbtxt(text, "ensemble/config.pbtxt")["ensemble_scheduling"]["step"]
    assert [s["model_version"] for s in steps] == [-1, 3]
    assert steps[0]["input_map"] == {"IN": "raw"}


def test_empty_text_is_an_empty_config() -> None:
    assert read_pbtxt("", "empty") == {}
    assert read_pbtxt("# only a comment\n", "empty") == {}


def test_syntax_error_names_source_and_line() -> None:
    text = 'name: "m"\ninput [\n  { name: "x" data_type: TYPE_FP32 dims: [ 4 ]\n]\n'
    with pytest.raises(ConfigError) as info:
        read_pbtxt(text, "models/m/config.pbtxt")
    err = info.value
    assert err.source == "models/m/config.pbtxt"
    assert "line 4" in err.problem
    assert str(err).startswith("models/m/config.pbtxt")


def test_unknown_field_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        read_pbtxt('name: "m"\nmax_bath_size: 4\n', "cfg.pbtxt")
    err = info.value
    assert err.field == "max_bath_size"
    assert "line 2, column 1" in err.problem
    assert "cfg.pbtxt: max_bath_size: line 2" in str(err)


def test_bad_enum_value_names_the_field() -> None:
    text = 'input [\n  { name: "x" data_type: TYPE_FP33 dims: [ 1 ] }\n]\n'
    with pytest.raises(ConfigError) as info:
        read_pbtxt(text, "cfg.pbtxt")
    err = info.value
    assert err.field == "data_type"
    assert "line 2" in err.problem
    assert "TYPE_FP33" in err.problem
    # The quoted source line protobuf puts in its message is not repeated.
    assert "'  {" not in err.problem


def test_two_schedulers_are_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        read_pbtxt("dynamic_batching {}\nsequence_batching {}\n", "cfg.pbtxt")
    assert info.value.field == "sequence_batching"


def test_round_trip_dict_proto_dict(parsed: dict[str, Any]) -> None:
    message = config_to_proto(parsed)
    assert isinstance(message, model_config_pb2.ModelConfig)
    assert message.input[0].data_type == model_config_pb2.TYPE_FP32
    assert list(message.input[0].dims) == [3, 224, -1]
    assert message.dynamic_batching.max_queue_delay_microseconds == 100
    assert message.dynamic_batching.priority_queue_policy[1].max_queue_size == 16
    assert message.instance_group[1].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU

    again = read_pbtxt(str(message), "round-trip")
    assert again == parsed
    assert json_format.MessageToDict(message, preserving_proto_field_name=True)["name"] == "resnet"


def test_config_to_proto_ignores_modelport_keys() -> None:
    message = config_to_proto(
        {"name": "m", "max_batch_size": 4, "modelport": {"description": "not Triton's"}}
    )
    assert message.name == "m"
    assert message.max_batch_size == 4


def test_config_to_proto_reports_bad_values() -> None:
    with pytest.raises(ConfigError) as info:
        config_to_proto({"name": "m", "max_batch_size": "lots"})
    assert info.value.source == "m"
    assert info.value.field == "max_batch_size"

    with pytest.raises(ConfigError) as info:
        config_to_proto({"input": [{"name": "x", "dims": ["a"]}]})
    assert info.value.field == "input.dims"
