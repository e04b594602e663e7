"""Generate the Python protobuf / gRPC modules from the ``.proto`` sources.

Generated code is not committed: it depends on the protoc and grpcio versions
it was made with, so it is produced at build time (``hatch_build.py`` imports
this file by path) or by hand::

    python -m modelport.protos.generate        # with src/ on sys.path
    python src/modelport/protos/generate.py    # from a checkout

The include root is the ``src`` directory, so the protos are known to protoc
as ``modelport/protos/*.proto`` and the generated imports read
``from modelport.protos import model_config_pb2``.

This module imports nothing from modelport: the build hook loads it before
the package is importable.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

#: The schemas, relative to the include root (the ``src`` directory).
PROTO_FILES: tuple[str, ...] = (
    "modelport/protos/model_config.proto",
    "modelport/protos/grpc_service.proto",
)

#: The only schema with a service, hence the only ``*_pb2_grpc.py`` wanted.
SERVICE_PROTO = "modelport/protos/grpc_service.proto"

#: Files written next to the protos, relative to the include root.
GENERATED_FILES: tuple[str, ...] = (
    "modelport/protos/model_config_pb2.py",
    "modelport/protos/model_config_pb2.pyi",
    "modelport/protos/grpc_service_pb2.py",
    "modelport/protos/grpc_service_pb2.pyi",
    "modelport/protos/grpc_service_pb2_grpc.py",
)


def _protoc(args: list[str]) -> None:
    """Run grpcio-tools' bundled protoc in-process; raise if it fails."""
    # protoc's own include dir for google/protobuf/*.proto, in case a schema
    # ever imports a well-known type.
    wkt = Path(protoc.__file__).resolve().parent / "_proto"
    argv = ["grpc_tools.protoc", f"-I{wkt}", *args]
    code = protoc.main(argv)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}: {' '.join(argv[1:])}")


def generate(src_root: Path) -> None:
    """Write the ``*_pb2.py``, ``*_pb2.pyi`` and ``grpc_service_pb2_grpc.py`` files.

    ``src_root`` is the directory that contains the ``modelport`` package; the
    outputs land next to the ``.proto`` files under it.
    """
    root = Path(src_root).resolve()
    missing = [p for p in PROTO_FILES if not (root / p).is_file()]
    if missing:
        raise FileNotFoundError(f"proto sources not found under {root}: {', '.join(missing)}")

    include = f"-I{root}"
    # Messages and type stubs for every schema.
    _protoc([include, f"--python_out={root}", f"--pyi_out={root}", *PROTO_FILES])
    # Service stubs only for the schema that declares a service; the gRPC
    # plugin would otherwise also write an empty model_config_pb2_grpc.py.
    _protoc([include, f"--grpc_python_out={root}", SERVICE_PROTO])


def _default_src_root() -> Path:
    """The ``src`` directory holding this checkout's ``modelport`` package."""
    return Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: optional single argument is the include root."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1:
        print("usage: generate.py [SRC_ROOT]", file=sys.stderr)
        return 2
    root = Path(args[0]) if args else _default_src_root()
    generate(root)
    for rel in GENERATED_FILES:
        print(root / rel)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
