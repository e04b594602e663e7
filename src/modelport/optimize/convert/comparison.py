"""What comparing the original and the ONNX model's answers found, output by output.

Plain data, apart from the comparison itself (``check.py``), so that the
error carrying a failed check (``errors.py``) and the report showing it can
name these types without importing the code that computes them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OutputCheck:
    """How one output compared: exact or within (rtol, atol), and where it differed most."""

    name: str
    datatype: str
    exact: bool
    rtol: float | None
    atol: float | None
    max_abs_diff: float | None
    """Largest |onnx - original| (over the failing elements when some fail); None for text."""
    row: int | None
    """The row holding ``max_abs_diff``, or the first differing row of an exact output."""
    differing_rows: int
    problem: str = ""
    """Why the output fails (shape or values); empty when it passes."""

    @property
    def ok(self) -> bool:
        return not self.problem


@dataclass(frozen=True)
class CheckResult:
    """Every output's comparison over the checked rows."""

    rows: int
    synthetic: bool
    origin: str
    outputs: tuple[OutputCheck, ...]

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    def failures(self) -> list[OutputCheck]:
        return [o for o in self.outputs if not o.ok]
