"""A CPU core of its own for each instance thread of a compute-bound model.

On a small machine the instance threads, the event loop and the kernel's
network work share a few cores. Left to itself the Linux scheduler now and
then wakes an instance thread on the core where the other instance is
computing, and it waits there while another core sits idle; it also moves
threads between cores, which costs them their caches. For a model whose
executions take milliseconds this costs a few percent of throughput and
some tail latency (docs/performance.md). For a model whose executions
take microseconds the event loop is the bottleneck, and pinning does not
help, so only threads whose recent executions each took a millisecond of
CPU time or more are pinned.

Each pinned thread holds its core exclusively among pinned threads,
server-wide: when every core is taken, further threads stay unpinned rather
than being stacked on a core that is already busy. The event loop and every
other thread may still run on any core. Only runtimes that compute on the
calling thread alone say they are ``pin_safe`` (ONNX Runtime with one
intra-op thread): a library that starts its own threads from the caller
would have them inherit the single core.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("modelport.scheduling")

#: Long executions in a row before a thread asks for a core.
PIN_STREAK = 8


class CoreClaims:
    """The cores this process may run on, each claimed by at most one pinned thread."""

    def __init__(self, cores: set[int] | None = None) -> None:
        if cores is None:
            cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        self._free = sorted(cores)
        self._lock = threading.Lock()

    def claim(self) -> int | None:
        """A core nobody else holds, or None when all are taken."""
        with self._lock:
            return self._free.pop(0) if self._free else None

    def release(self, core: int) -> None:
        with self._lock:
            if core not in self._free:
                self._free.append(core)
                self._free.sort()


#: The server's cores, shared by every model version.
CORES = CoreClaims()


class Pinning:
    """Pins the instance threads of one model version once their executions run long."""

    def __init__(self, min_ns: int, claims: CoreClaims | None = None, label: str = "") -> None:
        self.min_ns = min_ns
        self.claims = claims if claims is not None else CORES
        self.label = label
        self._local = threading.local()
        self._held: list[int] = []
        self._owners: dict[int, int] = {}
        """Which thread (its ident) holds each core."""
        self._lock = threading.Lock()

    def settled(self) -> bool:
        """Whether the calling thread is pinned, or was refused a core, for good."""
        local = self._local
        return getattr(local, "core", None) is not None or getattr(local, "refused", False)

    def after(self, cpu_ns: int) -> None:
        """Called on an instance thread after each execution it ran, with its CPU time."""
        if self.settled():
            return
        local = self._local
        streak = getattr(local, "streak", 0) + 1 if cpu_ns >= self.min_ns else 0
        local.streak = streak
        if streak < PIN_STREAK:
            return
        core = self.claims.claim()
        if core is None:
            local.refused = True  # every core is held: stay unpinned, do not ask again
            return
        try:
            os.sched_setaffinity(0, {core})  # 0: the calling thread
        except OSError as exc:
            self.claims.release(core)
            local.refused = True
            log.info(
                "could not pin an instance thread", extra={"model": self.label, "error": str(exc)}
            )
            return
        local.core = core
        with self._lock:
            self._held.append(core)
            self._owners[core] = threading.get_ident()
        log.debug("instance thread pinned", extra={"model": self.label, "core": core})

    @property
    def held(self) -> list[int]:
        with self._lock:
            return list(self._held)

    def release(self) -> None:
        """Give the cores back (the version is unloading; its threads are ending)."""
        with self._lock:
            held, self._held = self._held, []
            self._owners.clear()
        for core in held:
            self.claims.release(core)

    def release_ended(self) -> None:
        """Give back the cores of pinned threads that have ended.

        A version whose instance count grows replaces its thread pool (the
        scheduler's ``resize``); the old pool's pinned threads end with it
        while the version stays loaded, and their cores would otherwise stay
        claimed until it unloads.
        """
        alive = {t.ident for t in threading.enumerate()}
        with self._lock:
            ended = [c for c in self._held if self._owners.get(c) not in alive]
            for core in ended:
                self._held.remove(core)
                del self._owners[core]
        for core in ended:
            self.claims.release(core)
