"""``modelport optimize`` and ``modelport validate``: faster versions, checked on real rows.

Modules, in the order an optimization uses them:

- ``hardware``    CPU features (VNNI, AMX, BF16), cores, GPUs, ONNX Runtime providers, OpenVINO
- ``data``        --data and --labels, split into calibration and held-out rows
- ``candidates``  graph levels, INT8 dynamic / static QDQ, FP16, OpenVINO FP32 / BF16 / INT8;
                  skipped ones with reasons
- ``metrics``     one metric and a budget → within or not, and why
- ``measure``     latency and throughput per thread count and batch size
- ``choose``      the pure decision for the objective
- ``written``     the winner as a new version, all or nothing
- ``command``     the steps in order
- ``report``      rich table, report.json, report.md
- ``validate``    the CI gate: a new version against the current one

This package may import both planes; neither plane imports it.
"""

from __future__ import annotations

from modelport.optimize.tune.errors import OptimizeFailed

__all__ = ["OptimizeFailed"]
