"""``modelport convert``: turn a served model version into ONNX, checked and timed.

Modules, in the order a conversion uses them:

- ``source``      locate REPO/model/VERSION, load it through its runtime
- ``samples``     the rows to compare on: a --data file, or synthetic rows
- ``converters``  one function per framework (skl2onnx, onnxmltools, torch.onnx)
- ``graph``       make the ONNX graph's inputs and outputs the source's
- ``check``       compare both models' answers
- ``timing``      latency and throughput of both
- ``command``     the steps in order, writing the new version only on success
- ``report``      rich tables or JSON

This package may import both planes; neither plane imports it.
"""

from __future__ import annotations

from modelport.optimize.convert.errors import AnswersDiffer, ConversionFailed

__all__ = ["AnswersDiffer", "ConversionFailed"]
