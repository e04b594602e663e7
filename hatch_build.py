"""Hatchling build hook: generate the protobuf / gRPC stubs before packaging.

The ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` modules are not kept in
git (they are tied to the protoc and grpcio versions that made them), so each
wheel or editable install runs protoc from grpcio-tools first. The generator
itself lives in ``src/modelport/protos/generate.py`` and is loaded by path,
because the package is not importable while it is being built.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

from hatchling.builders.config import BuilderConfig
from hatchling.builders.hooks.plugin.interface import BuildHookInterface

_GENERATOR = Path("src") / "modelport" / "protos" / "generate.py"


def _load_generator(root: Path) -> ModuleType:
    """Import ``generate.py`` from the source tree without importing modelport."""
    path = root / _GENERATOR
    spec = importlib.util.spec_from_file_location("_modelport_proto_generate", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load the proto generator from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ProtoBuildHook(BuildHookInterface[BuilderConfig]):
    """Runs protoc for wheel and editable builds; sdists ship the .proto sources."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Generate the stubs into ``src/`` and make sure the wheel carries them."""
        if self.target_name != "wheel":
            # An sdist holds the .proto files and this hook; the wheel built
            # from it generates the stubs then.
            return
        root = Path(self.root)
        src_root = root / "src"
        generator = _load_generator(root)
        generator.generate(src_root)
        if version == "editable":
            # Editable installs import straight from src/, where they now are.
            return
        # The generated files are git-ignored, and hatch leaves ignored files
        # out of wheels unless they are included explicitly.
        force_include = build_data.setdefault("force_include", {})
        for rel in generator.GENERATED_FILES:
            force_include[str(src_root / rel)] = rel
