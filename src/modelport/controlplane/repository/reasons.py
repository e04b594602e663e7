"""Why a model or version is not served, in words fit for any caller.

Reasons reach callers through the repository index, model readiness errors,
failed loads and the management API. They are built from exceptions that
name files by absolute path (the loaders', and the frameworks' own), and a
caller has no business learning where the repository lives, or anything of
the disk outside it. So paths inside the repository are shown relative to its
root (``broken/1/model.onnx``) and any other absolute path by its bare file
name. The server's log keeps the full text for the operator.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

#: An absolute POSIX path: a slash that starts a word, then anything up to a
#: space, a quote or a bracket (``1/2``, ``and/or`` and ``http://`` do not
#: start with one).
_ABSOLUTE = re.compile(r"(?<![\w.~:/\\-])/[^\s'\"`,;()\[\]{}<>]+")


def public_reason(message: str, repository: Path) -> str:
    """``message`` with repository paths made relative and every other path cut to its name."""
    roots = {os.path.abspath(repository)}
    with contextlib.suppress(OSError, RuntimeError):  # a link loop: the plain path alone
        roots.add(str(repository.resolve()))
    for root in sorted(roots, key=len, reverse=True):
        if root != "/":
            message = message.replace(root.rstrip("/") + "/", "")
    return _ABSOLUTE.sub(_name_only, message)


def _name_only(match: re.Match[str]) -> str:
    path = match.group(0)
    trailing = ""
    while path and path[-1] in ".:":  # the end of a sentence, not of the name
        trailing = path[-1] + trailing
        path = path[:-1]
    return (os.path.basename(path.rstrip("/")) or "/") + trailing
