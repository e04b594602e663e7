"""``modelport convert`` of a torch.export program: slow (torch's exporter takes
seconds to trace), so it runs here rather than among the unit tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelport.types import TensorSpec
from tests.unit.convert.test_convert_frameworks import CANCER_X, add_version, convert, served

pytestmark = pytest.mark.integration


def test_pytorch_exported_program_with_a_rank_one_output(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")

    class Score(torch.nn.Module):
        """Linear 30 -> 1, squeezed: the model gives [N], the server answers [N, 1]."""

        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(30, 1)

        def forward(self, x: Any) -> Any:
            return torch.sigmoid(self.linear(x)).squeeze(-1)

    torch.manual_seed(0)
    module = Score().eval()
    program = torch.export.export(
        module, (torch.zeros(4, 30),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}
    )
    torch.export.save(program, str(add_version(tmp_path, "score") / "model.pt2"))
    data = tmp_path / "rows.npz"
    np.savez(data, x=(CANCER_X / CANCER_X.max(axis=0)).astype(np.float32))
    report = convert(tmp_path / "score" / "1", data)
    assert report.check.ok
    assert served(tmp_path / "score" / "2") == (
        TensorSpec("x", "FP32", (-1, 30)),
        TensorSpec("output__0", "FP32", (-1, 1)),
    )
