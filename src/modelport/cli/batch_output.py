"""``modelport batch``'s writers and checkpoint; they live in :mod:`modelport.batchfiles.writer`."""

from modelport.batchfiles.writer import (
    KEPT_FAILURES,
    WRITERS,
    CsvWriter,
    JsonlWriter,
    OutRow,
    Progress,
    Writer,
    progress_path,
)

__all__ = [
    "KEPT_FAILURES",
    "WRITERS",
    "CsvWriter",
    "JsonlWriter",
    "OutRow",
    "Progress",
    "Writer",
    "progress_path",
]
