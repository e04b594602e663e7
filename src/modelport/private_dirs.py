"""Creating directories that only their owner may enter: data, state and payload dirs.

``Path.mkdir(mode=0o700, parents=True)`` gives that mode to the last level
only; the parents it makes get the default, 0777 less the umask (0777 under
``umask 000``, common in containers). A new parent that anyone may write lets
anyone rename the private directory away and put their own in its place, and
one anyone may list shows the names inside (model names, key files).
"""

from __future__ import annotations

from pathlib import Path


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and every missing directory above it, each 0700.

    Levels that exist keep the mode their owner chose. Raises OSError as
    ``mkdir`` does (``FileExistsError`` when a level is a file).
    """
    missing: list[Path] = []
    level = path
    while not level.is_dir() and level.parent != level:
        missing.append(level)
        level = level.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            if not directory.is_dir():  # made by another process meanwhile, that is fine
                raise
