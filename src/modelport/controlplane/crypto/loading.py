"""Loading a version that may be sealed: decrypt into memory, load, release on unload.

The registry loads every version through ``load_version_at_rest``; a
version without ``sealed.json`` takes the plain path (``load_version``)
unchanged. A sealed one is opened into a MemoryView that lives exactly as
long as its runtime (some runtimes read their files lazily), and every
failure becomes a ModelLoadError naming the file, so that version alone is
UNAVAILABLE with the reason and the rest of the server serves on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import cast

from modelport.clock import Clock
from modelport.config.model import ModelConfig
from modelport.controlplane.crypto.keys import KeyProvider
from modelport.controlplane.crypto.memview import MemoryView
from modelport.controlplane.crypto.sealing import MANIFEST, is_sealed, open_sealed
from modelport.controlplane.lifecycle import ProcessHost, load_version
from modelport.dataplane.runtime.base import Runtime
from modelport.dataplane.runtime.files import check_version_dir
from modelport.dataplane.scheduled import ScheduledServable
from modelport.dataplane.table import ModelVersion
from modelport.errors import ModelLoadError
from modelport.types import Array, ModelSignature

#: Model-level directories a loader reads besides the version (plaintext, not sealed).
_BESIDE_VERSION = ("warmup",)


def load_version_at_rest(
    keys: KeyProvider | None,
    name: str,
    version: int,
    version_dir: Path,
    config: ModelConfig,
    source: str,
    server_timeout_s: float | None = None,
    clock: Clock | None = None,
    host: ProcessHost | None = None,
) -> ModelVersion:
    """``load_version``, decrypting a sealed version into memory first; ``host``: in a
    node of several workers, which one hosts models with process instances."""
    if not is_sealed(version_dir):
        return load_version(
            name, version, version_dir, config, source, server_timeout_s, clock=clock, host=host
        )
    if keys is None:
        raise ModelLoadError(
            f"sealed ({MANIFEST}) but no master key is configured: start the server with "
            "--master-key-file, MODELPORT_MASTER_KEY or key_provider"
        )
    if config.modelport.instance_process:
        raise ModelLoadError(
            "sealed models load in this process only: modelport.instance_process: true "
            "is not supported for them (memory files do not cross processes)"
        )
    # The sealed files on disk are what must stay inside the version; the
    # view's links to memory files lead out of it by design.
    check_version_dir(version_dir, config)
    files = open_sealed(version_dir, name, version, keys)
    view = MemoryView(name, version)
    try:
        for f in files:
            view.add(f.path, f.size, f.chunks())
        for beside in _BESIDE_VERSION:
            view.copy_beside(version_dir.parent, beside)
        model = load_version(
            name,
            version,
            view.version_dir,
            config,
            source,
            server_timeout_s,
            files_checked=True,
            clock=clock,
        )
    except BaseException:
        view.release()
        raise
    # load_version always builds a scheduler-backed version.
    scheduler = cast(ScheduledServable, model.servable).scheduler
    scheduler.runtime = _ReleasingRuntime(scheduler.runtime, view.release)
    return model


class _ReleasingRuntime:
    """A runtime that frees its memory files once it is unloaded."""

    __slots__ = ("_inner", "_release", "inline_safe", "pin_safe", "predict")

    def __init__(self, inner: Runtime, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release
        self.inline_safe = inner.inline_safe
        self.pin_safe = inner.pin_safe
        # Bound once: the request path pays no extra call.
        self.predict: Callable[[Mapping[str, Array], Sequence[str]], dict[str, Array]]
        self.predict = inner.predict

    @property
    def native(self) -> ModelSignature:
        return self._inner.native

    def unload(self) -> None:
        try:
            self._inner.unload()
        finally:
            self._release()
