"""Triton ``config.pbtxt`` <-> plain dict, through the generated ``ModelConfig``.

A ``config.pbtxt`` is protobuf text format for Triton's ``ModelConfig``
message, so it is parsed by protobuf itself (not by a hand-written grammar):
every Triton spelling, comment and list form is accepted exactly as Triton
accepts it, and unknown fields or enum values are rejected the same way.

The parsed message becomes the same dict shape as ``config.yaml`` and the
HTTP ``/config`` JSON: Triton's field names, enums as names (``"TYPE_FP32"``),
and integers as ints. Protobuf's JSON mapping writes 64-bit integers as
strings (JSON numbers lose precision past 2**53); those are turned back into
ints, guided by each field's declared type rather than by guessing from the
text, so a string parameter such as ``string_value: "2"`` stays a string.
"""

from __future__ import annotations

import re
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from modelport.errors import ConfigError
from modelport.protos import model_config_pb2

#: Protobuf scalar types that hold integers (JSON renders the 64-bit ones as strings).
_INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)

_DECIMAL = re.compile(r"-?\d+")
_LOCATION_PREFIX = re.compile(r"^\d+(?::\d+)?\s*:\s*")
_NAMED_FIELD = re.compile(r'(?:no field named|^Field) "(\w+)"')
_LAST_FIELD_ON_LINE = re.compile(r"([A-Za-z_]\w*)\s*:")
_JSON_FIELD = re.compile(r"Failed to parse (\w+) field")


def read_pbtxt(text: str, source: str) -> dict[str, Any]:
    """Parse a Triton ``config.pbtxt`` into a plain dict of Triton's fields.

    Fields left at their default are absent, as in protobuf's JSON mapping.
    Raises ``ConfigError`` naming ``source``, the field when it can be told,
    and the line and column of the first error.
    """
    message = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        field, problem = _describe_parse_error(exc, text)
        raise ConfigError(source, field, problem) from None
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return _restore_integers(data, message.DESCRIPTOR)


def config_to_proto(config: dict[str, Any]) -> model_config_pb2.ModelConfig:
    """Build the ``ModelConfig`` message for a config dict (gRPC ``ModelConfig``).

    Keys protobuf does not know, such as modelport's own ``modelport`` block,
    are dropped: Triton clients have no place for them.
    """
    message = model_config_pb2.ModelConfig()
    try:
        json_format.ParseDict(config, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        source = str(config.get("name") or "model config")
        # json_format nests its messages: "Failed to parse input field: Failed
        # to parse dims field: ..." names the path input.dims.
        field = ".".join(_JSON_FIELD.findall(str(exc)))
        raise ConfigError(source, field, str(exc)) from None
    return message


def _describe_parse_error(exc: text_format.ParseError, text: str) -> tuple[str, str]:
    """Split protobuf's parse error into (field, problem with line and column).

    protobuf prefixes its message with ``line:column :`` and sometimes the
    quoted source line; both are replaced by a plain "line N, column M".
    """
    line, column = exc.GetLine(), exc.GetColumn()
    detail = _LOCATION_PREFIX.sub("", str(exc), count=1)
    lines = text.splitlines()
    line_text = lines[line - 1] if line is not None and 0 < line <= len(lines) else ""
    quoted = f"'{line_text}': "
    if line_text and detail.startswith(quoted):
        detail = detail[len(quoted) :]

    named = _NAMED_FIELD.search(detail)
    if named:
        field = named.group(1)
    elif line_text and column:
        # The value at fault follows "name:" on the same line, e.g. a bad enum.
        before = _LAST_FIELD_ON_LINE.findall(line_text[: column - 1])
        field = before[-1] if before else ""
    else:
        field = ""

    if line is None:
        return field, detail
    where = f"line {line}" if not column else f"line {line}, column {column}"
    return field, f"{where}: {detail}"


def _restore_integers(data: dict[str, Any], descriptor: Descriptor) -> dict[str, Any]:
    """Turn the decimal strings of integer-typed fields (and map keys) into ints."""
    out: dict[str, Any] = {}
    for name, value in data.items():
        field = descriptor.fields_by_name.get(name)
        if field is None:  # not from this message; leave it as it is
            out[name] = value
            continue
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            key_field = entry.fields_by_name["key"]
            value_field = entry.fields_by_name["value"]
            out[name] = {_scalar(key_field, k): _value(value_field, v) for k, v in value.items()}
        elif field.is_repeated:
            out[name] = [_value(field, v) for v in value]
        else:
            out[name] = _value(field, value)
    return out


def _value(field: FieldDescriptor, value: Any) -> Any:
    """Convert one (non-repeated) value of ``field``."""
    if field.message_type is not None and isinstance(value, dict):
        return _restore_integers(value, field.message_type)
    return _scalar(field, value)


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    """An int for a decimal string in an integer-typed field; anything else unchanged."""
    if field.type in _INTEGER_TYPES and isinstance(value, str) and _DECIMAL.fullmatch(value):
        return int(value)
    return value
