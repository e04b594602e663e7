"""Which file in a version directory a backend loads, and that it stays inside it.

Several backends accept more than one file name (``model.skops`` or
``model.pkl``, ``model.xml`` or ``model.onnx`` ...); Triton's
``default_model_filename`` overrides the search. One rule, one error text,
for all of them.

A model's files are its version directory's: ``default_model_filename`` (and
every ``cc_model_filenames`` entry) is a relative path without ``..``, and
no link in the version directory, nor the version directory itself, may
lead out of it (out of the model directory, for the version directory).
Otherwise a config could serve another model's file
(``../../other/1/model.onnx``) under this model's name, or probe the
server's disk. Label files (``output[].label_filename``) are the model
directory's in the same way. Error texts name the field or the file's
path inside the version directory, never where anything outside it is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from modelport.config.model import ModelConfig
from modelport.errors import ModelLoadError

#: Why a named file is refused; the same text whatever it names, so a refusal
#: never tells whether something exists outside the version directory.
OUTSIDE = "must name a file inside the version directory (a relative path, no '..')"


def version_file(version_dir: Path, name: str, field: str = "default_model_filename") -> Path:
    """``version_dir / name``, when ``name`` is a relative path that stays inside it.

    A purely lexical check (the file need not exist); ``check_version_dir``
    adds the check on links for the directory as a whole.
    """
    parts = PurePosixPath(name).parts
    if (
        not name
        or "\0" in name
        or "\\" in name
        or PurePosixPath(name).is_absolute()
        or any(part == ".." for part in parts)
    ):
        raise ModelLoadError(f"{field} {OUTSIDE}")
    return version_dir.joinpath(*parts)


def check_version_dir(version_dir: Path, config: ModelConfig) -> None:
    """Refuse a version directory from which loading could read outside it.

    The file names the config gives must be inside the directory, and every
    link below it, to a file or a directory, must resolve inside it: a
    runtime may open any file of its version (an OpenVINO ``.bin`` beside its
    ``.xml``, an MLflow model's artifacts, a python model's modules), so the
    rule is the directory's, not one file's. Links are resolved first, then
    checked. The version directory itself may be a link only to a place
    inside its model directory: ``repo/d/1 -> ../b/1`` would serve model b's
    files (another tenant's, perhaps) under d's name and config.
    """
    root = _resolved(version_dir, ".")
    if _resolved(version_dir.parent, ".") not in root.parents:
        raise ModelLoadError(
            f"{version_dir.name}: the version directory is a link leading out of its model "
            "directory; a version's files must be inside its model"
        )
    names = {"default_model_filename": config.default_model_filename}
    names.update({f"cc_model_filenames.{k}": v for k, v in config.cc_model_filenames.items()})
    for field, name in names.items():
        if name:
            path = version_file(version_dir, name, field)
            if not _inside(_resolved(path, field, named=True), root):
                raise ModelLoadError(f"{field} {OUTSIDE}")
    for base, dirs, files in os.walk(version_dir):
        for entry in (*dirs, *files):
            path = Path(base) / entry
            if path.is_symlink():
                rel = path.relative_to(version_dir).as_posix()
                if not _inside(_resolved(path, rel), root):
                    raise ModelLoadError(
                        f"{rel}: a link leading out of the version directory; "
                        "a model's files must be inside it"
                    )
    check_label_files(version_dir.parent, config)


def check_label_files(model_dir: Path, config: ModelConfig) -> None:
    """Refuse an output's ``label_filename`` that names a file outside the model directory.

    Triton reads label files (a classification model's class names) relative
    to the model directory; a repository may well have them, so they are
    accepted, but only as a relative path without ``..`` that, links
    followed, stays inside that directory. The reason is the same whatever
    the name points at.
    """
    root = _resolved(model_dir, ".")
    for i, output in enumerate(config.output):
        if not output.label_filename:
            continue
        field = f"output[{i}].label_filename"
        outside = f"{field} must name a file inside the model directory (a relative path, no '..')"
        try:
            path = version_file(model_dir, output.label_filename, field)
        except ModelLoadError:
            raise ModelLoadError(outside) from None
        if not resolves_below(path, root):
            raise ModelLoadError(outside)


def _resolved(path: Path, what: str, named: bool = False) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a link loop, a name too long ...
        if named:
            raise ModelLoadError(f"{what} {OUTSIDE}") from None
        raise ModelLoadError(f"{what}: a link that cannot be followed") from None


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolves_below(path: Path, root: Path) -> bool:
    """Whether ``path``, links followed, is strictly below ``root`` (links followed).

    False when either cannot be followed (a link loop, a name too long ...):
    the one check of "inside this directory" for the repository scan, label
    files and warmup sample files.
    """
    try:
        return root.resolve() in path.resolve().parents
    except (OSError, RuntimeError):
        return False


def model_file(version_dir: Path, config: ModelConfig, filenames: Sequence[str]) -> Path:
    """``default_model_filename`` when set, else the first of ``filenames`` present."""
    if config.default_model_filename:
        path = version_file(version_dir, config.default_model_filename)
        if not path.is_file():
            raise ModelLoadError(f"{path}: no {config.default_model_filename} in version directory")
        return path
    for filename in filenames:
        path = version_dir / filename
        if path.is_file():
            return path
    raise ModelLoadError(f"{version_dir}: no {' or '.join(filenames)} in version directory")
