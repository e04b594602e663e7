"""Scanning a repository in Triton's layout: ``REPO/<model>/<version>/model.onnx``.

A scan is a pure read: it reports what is on disk (models, their config
file, version directories, and a fingerprint of each) and leaves deciding
what to load to the registry. Model names are checked here so no name from
a request can point outside the repository.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from modelport.errors import InvalidRequest

CONFIG_FILES = ("config.yaml", "config.pbtxt")
#: Matched with fullmatch: ``$`` would also accept a name followed by a newline.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def check_model_name(name: str) -> str:
    """Refuse names that could escape the repository (``..``, ``/``, NUL ...)."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise InvalidRequest(
            f"model name {name!r} is not allowed: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit"
        )
    return name


def _fingerprint(path: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and modification times of every file below ``path``."""
    items = []
    for p in sorted(path.rglob("*")):
        if p.is_file():
            st = p.stat()
            items.append((str(p.relative_to(path)), st.st_size, st.st_mtime_ns))
    return tuple(items)


@dataclass(frozen=True)
class ModelSource:
    """One model directory as found on disk."""

    name: str
    path: Path
    config_file: Path | None
    versions: dict[int, Path]
    config_fingerprint: tuple[tuple[str, int, int], ...] = ()
    version_fingerprints: dict[int, tuple[tuple[str, int, int], ...]] = field(default_factory=dict)
    problem: str = ""
    """Why the directory cannot be served as it is (empty when it can)."""


def scan_model(repo: Path, name: str) -> ModelSource | None:
    """Read one model directory; None when it does not exist."""
    path = repo / check_model_name(name)
    if not path.is_dir():
        return None
    present = [path / f for f in CONFIG_FILES if (path / f).is_file()]
    problem = ""
    config_file: Path | None = None
    if len(present) > 1:
        problem = (
            f"{path}: both {present[0].name} and {present[1].name} are present; keep exactly one"
        )
    elif present:
        config_file = present[0]
    versions: dict[int, Path] = {}
    for child in path.iterdir():
        if child.is_dir() and child.name.isdigit() and int(child.name) > 0:
            versions[int(child.name)] = child
    return ModelSource(
        name=name,
        path=path,
        config_file=config_file,
        versions=versions,
        config_fingerprint=tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in present),
        version_fingerprints={v: _fingerprint(p) for v, p in versions.items()},
        problem=problem,
    )


def scan_repository(repo: Path) -> dict[str, ModelSource]:
    """Every model directory in ``repo`` whose name is acceptable."""
    found: dict[str, ModelSource] = {}
    for child in sorted(repo.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        try:
            source = scan_model(repo, child.name)
        except InvalidRequest:
            continue
        if source is not None:
            found[child.name] = source
    return found
