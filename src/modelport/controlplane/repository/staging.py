"""Hidden directories in a model directory that become version directories by a rename.

``convert``, ``optimize`` and sealing build a version beside the others
under a dot-name (the repository scan ignores names that are not numbers)
and rename it into place, so the server sees no version or a whole one.
``tempfile.mkdtemp`` creates such a directory with mode 0700, which a server
running as another user cannot read; it must get its sibling's mode before
the rename makes it visible.
"""

from __future__ import annotations

import stat
from pathlib import Path


def copy_mode(staging: Path, like: Path) -> None:
    """Give ``staging`` the permission bits of the version directory ``like``.

    Called once the staged files are written, right before the rename: a
    read-only sibling (0555) would otherwise stop the writing itself.
    """
    staging.chmod(stat.S_IMODE(like.stat().st_mode))
