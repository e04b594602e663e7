"""The rich console the commands print their tables and reports through.

On a terminal rich fits a table to the window. Written to a pipe or a file
there is no window, and rich would assume 80 columns: a long candidate name
or reason then wraps over several lines, or is cut, and a script or a log
reader can no longer take one row per line. There every row and line is
printed whole instead, at its natural width.

Values that come from users or data (model names, paths, reasons) go
through ``rich.markup.escape`` before they are printed: rich reads
``[ae]`` as a markup tag and would drop it.
"""

from __future__ import annotations

from rich.console import Console

#: Width given to a console that is not a terminal: wider than any row.
UNWRAPPED_WIDTH = 10_000


def output_console(stderr: bool = False) -> Console:
    """A console for stdout (or stderr) that wraps only on a terminal."""
    console = Console(stderr=stderr)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, width=UNWRAPPED_WIDTH, soft_wrap=True)
