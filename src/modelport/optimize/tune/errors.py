"""How ``modelport optimize`` and ``modelport validate`` refuse.

Both sit under ModelportError; the command line maps them to exit codes in
one place (``cli/optimize.py``)::

    ModelportError
    ├── OptimizeFailed      bad input or nothing can be done here (exit 2, nothing written)
    └── ValidationFailed    the new version regressed past a threshold (exit 1)
"""

from __future__ import annotations

from modelport.errors import ModelportError


class OptimizeFailed(ModelportError):
    """Raised when a version cannot be optimized or validated: path, data, labels, model."""


class ValidationFailed(ModelportError):
    """Raised when ``validate`` finds a regression beyond a stated threshold."""
