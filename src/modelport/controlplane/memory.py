"""The memory budget (``--memory-budget``): what loaded versions may cost a node.

Each version's cost is measured, not guessed: the process's resident memory
before and after its load and warm-up (plus the resident memory of its
worker processes, with ``instance_process``). A load that would cross the
budget first unloads the least recently used idle versions, chosen by
:func:`evictions` (pure, so it is tested with no server and no sleeps);
the registry applies that choice and keeps evicted versions loadable on
demand, as it does idle ones. Memory freed by an unload goes back to the
system (``trim_heap``), or the next load would be measured against a heap
that only looks free.

Never evicted: a version with requests queued or computing (it may be
later, once they end), one a traffic policy or canary pins, and one of a
model marked ``keep_loaded``.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from modelport.dataplane.table import ModelVersion
from modelport.errors import Unavailable

log = logging.getLogger("modelport.memory")

#: The index reason of a version unloaded to make room for another; a request loads it again.
MEMORY_REASON = "unloaded: memory"

#: How often a load that waits for room looks again (versions busy now may be idle soon).
POLL_S = 0.05

#: (model, version): one loaded version, as the registry's serving table names it.
Key = tuple[str, str]

#: Called after each eviction: the model, the version, its measured bytes and the load it made
#: room for (the audit log).
EvictionRecorder = Callable[[str, str, int, str], Awaitable[None]]


class OverBudget(Unavailable):
    """Raised when a version cannot load within the memory budget and nothing can be evicted."""


@dataclass(frozen=True, slots=True)
class Resident:
    """A loaded version, as the eviction choice sees it."""

    key: Key
    bytes: int
    last_used_ns: int
    evictable: bool
    """Idle, not pinned, not ``keep_loaded``: it may be unloaded now."""
    later: bool = False
    """Not evictable now only because requests are queued or computing on it."""


def evictions(
    candidates: Iterable[Resident], needed_bytes: int, free_bytes: int
) -> list[Key] | None:
    """The versions to unload so that ``needed_bytes`` fit, least recently used first.

    An empty list when they fit already; None when even every evictable version
    would not free enough (then nothing should be unloaded at all: evicting some
    and failing anyway would cost their users a cold start for nothing).
    """
    if needed_bytes <= free_bytes:
        return []
    chosen: list[Key] = []
    freed = free_bytes
    for resident in sorted(candidates, key=lambda r: (r.last_used_ns, r.key)):
        if not resident.evictable:
            continue
        chosen.append(resident.key)
        freed += resident.bytes
        if needed_bytes <= freed:
            return chosen
    return None


def worth_waiting(candidates: Sequence[Resident], needed_bytes: int, free_bytes: int) -> bool:
    """Whether room could come once the busy versions are idle (so a load waits for it)."""
    soon = [replace(r, evictable=r.evictable or r.later) for r in candidates]
    return evictions(soon, needed_bytes, free_bytes) is not None


def format_bytes(count: int) -> str:
    """``120 MiB``, ``2.0 GiB``: sizes as an operator reads them in a message."""
    if count >= 1 << 30:
        return f"{count / (1 << 30):.1f} GiB"
    if count >= 1 << 20:
        return f"{count / (1 << 20):.0f} MiB"
    return f"{count / 1024:.0f} KiB"


def refusal(label: str, needed_bytes: int, limit_bytes: int, free_bytes: int) -> str:
    """Why ``label`` did not load, naming the budget, so an operator knows which flag to change."""
    return (
        f"loading {label} needs about {format_bytes(needed_bytes)}; the memory budget "
        f"{format_bytes(limit_bytes)} has {format_bytes(max(0, free_bytes))} free "
        "and nothing can be evicted"
    )


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_rss(pid: int | None = None) -> int:
    """Resident bytes of this process (or ``pid``) from ``/proc``; 0 where there is none.

    ``/proc/PID/statm`` is one short read, cheap enough to take around every
    load; where it is missing the budget counts versions by their files alone.
    """
    path = f"/proc/{pid if pid is not None else 'self'}/statm"
    try:
        with open(path, "rb") as f:
            fields = f.read().split()
    except OSError:
        return 0
    return int(fields[1]) * _PAGE if len(fields) > 1 else 0


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def trim_heap() -> bool:
    """Give freed heap pages back to the system (glibc's ``malloc_trim(0)``).

    glibc keeps freed arenas mapped; after a version's session is gone its
    memory still counts in RSS until trimmed. False where there is no glibc.
    """
    if _TRIM is None:
        return False
    return bool(_TRIM(0))


def disk_bytes(path: Path) -> int:
    """Bytes of the files under a version directory: the least a loaded copy costs.

    The estimate for a version never measured, and the floor of a measure that
    reused memory freed just before (so reads lower than the model really is).
    """
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def worker_pids(model: ModelVersion) -> list[int]:
    """The pids of a version's worker processes (``instance_process``); [] for threads."""
    scheduler = getattr(model.servable, "scheduler", None)
    runtime = getattr(scheduler, "runtime", None)
    pids = getattr(runtime, "pids", None)
    if not callable(pids):
        return []
    return [pid for pid in pids() if isinstance(pid, int)]


class MemoryBudget:
    """The measured cost of each loaded version against the budget; the registry applies it.

    ``busy`` says whether a version has requests queued or computing (the idle
    unloader's test); ``rss`` reads a process's resident bytes (a fake in tests).
    """

    def __init__(
        self,
        limit_bytes: int,
        busy: Callable[[ModelVersion], bool],
        on_evict: EvictionRecorder | None = None,
        rss: Callable[[int | None], int] = process_rss,
        trim: Callable[[], bool] = trim_heap,
        poll_s: float = POLL_S,
    ) -> None:
        if limit_bytes <= 0:
            raise ValueError(f"the memory budget must be positive, got {limit_bytes}")
        self.limit = limit_bytes
        self.busy = busy
        self.on_evict = on_evict
        self.rss = rss
        self.trim = trim
        self.poll_s = poll_s
        self.sizes: dict[Key, int] = {}
        """Measured bytes of each loaded version."""
        self._known: dict[Key, int] = {}
        """The last measure of every version ever loaded: the estimate when it loads again."""

    def used(self) -> int:
        return sum(self.sizes.values())

    def free(self) -> int:
        return self.limit - self.used()

    def estimate(self, key: Key, path: Path) -> int:
        """What loading ``key`` will likely cost: its last measure, else its files' size."""
        known = self._known.get(key)
        return known if known is not None else disk_bytes(path)

    async def before_load(self) -> int:
        """This process's resident bytes before a load, freed pages given back first."""
        await asyncio.to_thread(self.trim)
        return self.rss(None)

    async def measured(self, key: Key, before: int, model: ModelVersion, path: Path) -> int:
        """Record what loading ``model`` cost: the growth of this process, its workers,
        and never less than its files.

        The heap is trimmed before reading, so what the load allocated and freed
        (the parsed file, say) does not count; without it the same version reads
        larger or smaller by tens of MiB, as freed pages were reused or not.
        """
        await asyncio.to_thread(self.trim)
        grown = max(0, self.rss(None) - before)
        workers = sum(self.rss(pid) for pid in worker_pids(model))
        size = max(grown + workers, disk_bytes(path))
        self.sizes[key] = size
        self._known[key] = size
        return size

    def forget(self, key: Key) -> None:
        """The version is unloaded: its bytes are free again."""
        self.sizes.pop(key, None)

    def residents(
        self, models: Iterable[ModelVersion], pinned: Callable[[str, int], bool], loading: Key
    ) -> list[Resident]:
        """Every loaded version but ``loading``, with whether it may be evicted now."""
        found: list[Resident] = []
        for model in models:
            key = (model.name, model.version)
            if key == loading:
                continue
            held = model.config.modelport.keep_loaded or pinned(model.name, int(model.version))
            busy = not held and self.busy(model)
            found.append(
                Resident(
                    key,
                    self.sizes.get(key, 0),
                    model.last_used_ns,
                    evictable=not held and not busy,
                    later=busy,
                )
            )
        return found

    async def release(self) -> None:
        """Collect what an unload left behind and give the freed pages back to the system."""
        gc.collect()
        await asyncio.to_thread(self.trim)

    async def record(self, name: str, version: str, size: int, reason: str) -> None:
        """Tell ``on_evict`` of an eviction; a failure to record is logged, never raised."""
        if self.on_evict is None:
            return
        try:
            await self.on_evict(name, version, size, reason)
        except Exception:
            log.exception("eviction not recorded", extra={"model": name, "version": version})


class _Audit(Protocol):
    def record(
        self,
        model: str,
        action: str,
        *,
        actor: str,
        detail: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> object: ...


def node_budget(
    total_bytes: int | None,
    workers: int,
    busy: Callable[[ModelVersion], bool],
    audit: _Audit,
    actor: str,
) -> MemoryBudget | None:
    """This process's share of ``--memory-budget`` (None: no budget), recording evictions.

    The budget is the node's: each of ``workers`` processes holds its own copy
    of what it loads, so each accounts against an equal share.
    """
    if total_bytes is None:
        return None

    async def recorded(name: str, version: str, size: int, made_room_for: str) -> None:
        detail = {"version": version, "bytes": size, "made_room_for": made_room_for}
        await asyncio.to_thread(
            audit.record, name, "model.unload", actor=actor, detail=detail, reason=MEMORY_REASON
        )

    return MemoryBudget(max(1, total_bytes // max(1, workers)), busy, recorded)
