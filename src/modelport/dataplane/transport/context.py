"""What both transports need, handed in by the composition root."""

from __future__ import annotations

from dataclasses import dataclass

from modelport.dataplane.pipeline import Pipeline
from modelport.dataplane.table import ModelTable, RepositoryControl
from modelport.observability.metrics import Metrics

#: Triton protocol extensions served on both transports.
EXTENSIONS = (
    "binary_tensor_data",
    "model_repository",
    "model_repository(unload_dependents)",
    "model_configuration",
    "statistics",
)


@dataclass(frozen=True)
class TransportContext:
    pipeline: Pipeline
    table: ModelTable
    repository: RepositoryControl
    metrics: Metrics
    server_name: str
    server_version: str
    max_body_bytes: int
    max_elements: int
