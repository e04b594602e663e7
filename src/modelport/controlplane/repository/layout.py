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

from modelport.dataplane.runtime.files import resolves_below
from modelport.errors import InvalidRequest

CONFIG_FILES = ("config.yaml", "config.pbtxt")
#: Matched with fullmatch: ``$`` would also accept a name followed by a newline.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
NAME_RULE = (
    "use letters, digits, '_', '-' and '.', starting with a letter or digit "
    "(at most 128 characters, no '..')"
)


def valid_model_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None and ".." not in name


def check_model_name(name: str) -> str:
    """Refuse names that could escape the repository (``..``, ``/``, NUL ...)."""
    if not valid_model_name(name):
        raise InvalidRequest(f"model name {name!r} is not allowed: {NAME_RULE}")
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


#: Why a model directory that is a link out of the repository is not served;
#: where it leads is not said.
LINKED_OUT = (
    "the model directory is a link leading out of the repository; a model must be inside it"
)
#: Why a config file that is a link out of its model directory is not read;
#: where it leads (another model's config, a file elsewhere) is not said.
CONFIG_LINKED_OUT = (
    "the config file is a link leading out of the model directory; "
    "a model's config must be inside it"
)


def scan_model(repo: Path, name: str) -> ModelSource | None:
    """Read one model directory; None when it does not exist.

    The repository root may itself be a link (git-sync's ``repo ->
    .worktrees/<sha>``), and a model directory may be a link to another
    place inside it; a model directory leading out of the (resolved) root is
    reported with a problem and not read at all. A version directory that
    leads out of its model directory is listed but not fingerprinted (it
    could be anywhere, as large as a disk): loading refuses it
    (``check_version_dir``). A config file that is a link leading out of its
    model directory (``d/config.pbtxt -> ../b/config.pbtxt``, another
    tenant's model's) is a problem too, and is neither read nor stat'ed
    through the link, whether its target exists or not.
    """
    path = repo / check_model_name(name)
    if not path.is_dir():
        return None
    if not resolves_below(path, repo):
        return ModelSource(name, path, None, {}, problem=f"{name}: {LINKED_OUT}")
    candidates = [path / f for f in CONFIG_FILES]
    linked_out = [p for p in candidates if p.is_symlink() and not resolves_below(p, path)]
    present = [p for p in candidates if p not in linked_out and p.is_file()]
    problem = ""
    config_file: Path | None = None
    if linked_out:
        problem = f"{name}/{linked_out[0].name}: {CONFIG_LINKED_OUT}"
    elif len(present) > 1:
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
        config_fingerprint=tuple(
            (p.name, st.st_size, st.st_mtime_ns)
            for p in candidates
            if p in present or p in linked_out
            for st in [p.lstat() if p in linked_out else p.stat()]
        ),
        version_fingerprints={
            v: _fingerprint(p) if resolves_below(p, path) else () for v, p in versions.items()
        },
        problem=problem,
    )


def misnamed_models(repo: Path) -> dict[str, str]:
    """Directories in ``repo`` not served for their name, each with the reason.

    Triton would try to load them and fail; modelport lists them in the
    index as UNAVAILABLE, so they do not vanish without a word, but they do
    not count against readiness (``lost+found`` is no model). The name comes from
    the disk, not from a caller, but may still hold control characters or
    bytes that are not UTF-8: it is shown escaped (``ascii``), and an escaped
    name (it holds a backslash) can never be taken for a valid one. Hidden
    directories (``.git``) are not models and are left out.
    """
    found: dict[str, str] = {}
    for child in sorted(repo.iterdir()):
        if child.name.startswith(".") or valid_model_name(child.name) or not child.is_dir():
            continue
        shown = ascii(child.name)
        found[shown[1:-1]] = f"directory {shown} is not a valid model name: {NAME_RULE}"
    return found


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
