"""What ``modelport batch`` shows: a progress bar on a terminal, then a summary.

The bar goes to stderr and only on a terminal, so a script reading stdout
gets the summary alone; its total is the input's size in bytes (rows for
parquet), which is known without reading the file through first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

from modelport.batchfiles.writer import Progress as Checkpoint
from modelport.cli.console import output_console


@contextlib.contextmanager
def progress_bar(total: int, start: int) -> Iterator[Callable[[int], None]]:
    """A function to call with the input position after each chunk."""
    console = output_console(stderr=True)
    if not console.is_terminal:
        yield lambda position: None
        return
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("batch", total=total, completed=start)
        yield lambda position: bar.update(task, completed=position)


def summary(progress: Checkpoint, output: Path, rows_per_s: float, listed: int) -> None:
    """Rows done, rate, and the failed rows with their reasons."""
    console = output_console()
    total = progress.succeeded + progress.failed
    console.print(
        f"{total} rows: {progress.succeeded} succeeded, {progress.failed} failed "
        f"({rows_per_s:.0f} rows/s); predictions in {escape(str(output))}",
        highlight=False,
    )
    for row, message in progress.failures[:listed]:
        text = message if message.startswith(f"row {row}") else f"row {row}: {message}"
        console.print(f"  failed {escape(text)}", highlight=False)
    more = progress.failed - min(len(progress.failures), listed)
    if more > 0:
        console.print(f"  ... and {more} more failed rows", highlight=False)
