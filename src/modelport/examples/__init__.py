"""Bundled example models, served by ``modelport serve`` when given no repository.

The folder returned by :func:`repository_path` is a Triton-layout model
repository holding two small real models, trained on datasets that ship inside
scikit-learn so that nothing is downloaded, and kept as ONNX files::

    models/
      breast_cancer/          30 tumour measurements -> malignant (0) / benign (1)
        config.yaml
        1/model.onnx
      digits/                 8x8 grey image, raw pixels 0..16 -> digit 0..9
        config.yaml
        1/model.onnx

``samples/`` next to it holds one Open Inference Protocol v2 request body per
model, cut from a real dataset row, for the README and for smoke tests.

They are rebuilt, deterministically, by ``python -m modelport.examples.build_models``;
the ONNX files are committed so that serving them needs neither scikit-learn
nor skl2onnx. Importing this package does nothing beyond defining the function.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["repository_path", "samples_path"]


def _package_dir(name: str) -> Path:
    """Return a folder inside this package as a real path on disk.

    The server walks the repository with ordinary file APIs (and onnxruntime
    opens model files by path), so a zip-imported package, whose resources are
    not files, cannot be served; fail loudly instead of handing back a path
    that does not exist.
    """
    resource = files(__name__) / name
    path = Path(str(resource))
    if not path.is_dir():
        raise FileNotFoundError(
            f"bundled example folder {name!r} is not a directory on disk "
            f"({resource!s}); install modelport as files, not from a zip"
        )
    return path


def repository_path() -> Path:
    """Return the folder of the bundled Triton-layout example model repository."""
    return _package_dir("models")


def samples_path() -> Path:
    """Return the folder of the example OIP v2 request bodies, one per model."""
    return _package_dir("samples")
