"""``modelport batch``'s row ↔ tensor conversion: see :mod:`modelport.batchfiles.tensors`."""

from modelport.batchfiles.tensors import (
    DTYPES,
    HEADER_LENGTH,
    Layout,
    RowError,
    TensorSpec,
    UsageError,
    decode_response,
    encode_request,
    row_value,
    specs,
    to_array,
)

__all__ = [
    "DTYPES",
    "HEADER_LENGTH",
    "Layout",
    "RowError",
    "TensorSpec",
    "UsageError",
    "decode_response",
    "encode_request",
    "row_value",
    "specs",
    "to_array",
]
