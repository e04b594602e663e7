"""The two ways ``modelport convert`` refuses, besides the core tree's load errors.

Both sit under ModelportError so callers catch one base class; the command
line maps them to exit codes in one place (``cli/convert.py``)::

    ModelportError
    ├── ConversionFailed    the model cannot be turned into ONNX here (exit 2)
    └── AnswersDiffer       the ONNX model answers differently (exit 1)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelport.errors import ModelportError

if TYPE_CHECKING:
    from modelport.optimize.convert.comparison import CheckResult


class ConversionFailed(ModelportError):
    """Raised when a version cannot be converted: wrong path, backend, data or library."""


class AnswersDiffer(ModelportError):
    """Raised when the ONNX model's answers fall outside the tolerance of the original's.

    ``check`` holds every output's comparison, for the report.
    """

    def __init__(self, message: str, check: CheckResult) -> None:
        super().__init__(message)
        self.check = check
