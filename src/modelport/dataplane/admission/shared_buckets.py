"""Token buckets shared by the worker processes of one node, in one mapped file.

With ``--workers N`` the front-end processes of a node act as one server, so a
limit of 10/s must be 10/s for the node, not for each worker. Without Redis
the buckets live in a file under the node's directory (``<node_dir>/buckets``)
that every worker maps: one table, one decision, whichever worker is asked.
The arithmetic is :func:`~modelport.dataplane.admission.ratelimit.take`, the
same as the memory and Redis limiters'.

Layout (little-endian, ``HEADER_SIZE + capacity * SLOT_SIZE`` bytes, sized
once at creation)::

    header  magic "mpbucket" | version u32 | capacity u32 | probe u32 |
            slot size u32 | boot id 16 bytes | empty_until f64 | zeros to 64
    slot    key hash u64 (0: never used) | tokens f64 | stamp f64 | full_at f64

A key is the 64-bit BLAKE2b digest of its string (a collision of two live
keys in 2**64 is not a concern); its slot is found by linear probing from
``hash % capacity`` over at most ``probe`` slots. ``full_at`` is when the
bucket will hold ``burst`` tokens again: past it the bucket is in exactly the
state of a key never seen, so its slot may be reused for another key
without changing any decision (see ratelimit.py). When a new key finds no
never-used and no full slot in its probe window, the slot with the oldest
stamp is taken: that key starts again from a full bucket, which errs toward
allowing, like MemoryRateLimiter past ``max_keys``. Slots are never emptied,
so a lookup may stop at the first never-used slot.

Exclusion: every operation holds ``flock`` on the file (and a thread lock,
since threads of one process share the descriptor) for a few microseconds,
reads the clock inside the lock, and never awaits. Reading the clock inside
the lock keeps stamps in order across processes: ``time.monotonic`` is
CLOCK_MONOTONIC, one clock for the whole machine on Linux, so stamps written
by different workers are comparable. A process that dies holding the lock
releases it with its descriptor.

A forked child gets its own descriptor (``os.register_at_fork``): a
descriptor inherited through fork shares its flock with the parent, which
would exclude nothing.

Decisions, and why:

- A file at the path that is not a table of this version, capacity and probe
  length (wrong size, foreign header, a directory, another owner, readable
  by others) raises ConfigError naming the file; it is never overwritten.
  The file is created whole under a temporary name and linked into place,
  so a table half-written by a crash cannot exist: whatever is there is
  either valid or someone else's, and deleting state another running server
  maps would silently split the node's limits. Remove the file (with every
  server of the node stopped) to start over.
- A table written before the last reboot (its boot id is not this boot's)
  is cleared on open: monotonic stamps from another boot mean nothing now.
- ``empty_until``, written under the lock, is the latest time until which
  some bucket may hold less than one token. :meth:`SharedBuckets.any_empty`
  reads it without the lock, so a caller asking "is anyone blocked?" on
  every request (brute-force blocking) pays one memory read and one clock
  read while nobody is.

Worked example, rate 1/s and burst 3, two workers A and B on one file: A
takes three tokens at t=0; B at t=0.4 finds the same slot with 0.4 tokens
and is refused with ``retry_after_s`` 0.6; at t=1.0 either worker gets the
one token back.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import stat
import struct
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path

from modelport.dataplane.admission.ratelimit import Decision, check_limit, take
from modelport.errors import ConfigError

MAGIC = b"mpbucket"
VERSION = 1

#: Buckets a table holds by default (2 MiB of file).
DEFAULT_CAPACITY = 65_536

#: Slots looked at for one key at most.
DEFAULT_PROBE = 32

#: Key hashes remembered per handle (a hash costs more than the rest of a lookup).
_HASHES_KEPT = 4096

# magic, version, capacity, probe, slot size, boot id, empty_until
_HEADER = struct.Struct("<8sIIII16sd")
HEADER_SIZE = 64
_BOOT = slice(24, 40)  # the boot id in _HEADER
_EMPTY_UNTIL_OFFSET = 40  # of the f64 in _HEADER; 8-aligned, read as one load
# key hash (0: never used), tokens, stamp, full_at
_SLOT = struct.Struct("<Qddd")
SLOT_SIZE = _SLOT.size

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


def table_size(capacity: int) -> int:
    """Bytes of a table of ``capacity`` buckets."""
    return HEADER_SIZE + capacity * SLOT_SIZE


def key_hash(key: str) -> int:
    """The 64-bit slot key of ``key``; never 0, which marks a never-used slot."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


def boot_id() -> bytes:
    """This boot's id (16 bytes), or zeros where the system does not say."""
    try:
        return uuid.UUID(_BOOT_ID.read_text().strip()).bytes
    except (OSError, ValueError):
        return bytes(16)


class SharedBuckets:
    """Token buckets in a file mapped by every worker of the node; see the module doc.

    Opened with :meth:`open`; every method is synchronous and takes a few
    microseconds, so the event loop calls them directly.
    """

    def __init__(
        self,
        path: Path,
        fd: int,
        table: mmap.mmap,
        capacity: int,
        probe: int,
        clock: Callable[[], float],
    ) -> None:
        self._path = path
        self._fd = fd
        self._table = table
        self._capacity = capacity
        self._probe = probe
        self._clock = clock
        self._thread_lock = threading.Lock()
        self._hashes: dict[str, int] = {}
        # One aligned 8-byte load or store (not struct's byte copies), so the
        # unlocked read in any_empty never sees half of a write.
        end = _EMPTY_UNTIL_OFFSET + 8
        self._empty_until = memoryview(table)[_EMPTY_UNTIL_OFFSET:end].cast("d")

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        capacity: int = DEFAULT_CAPACITY,
        probe: int = DEFAULT_PROBE,
        clock: Callable[[], float] = time.monotonic,
    ) -> SharedBuckets:
        """Map the table at ``path``, creating it (mode 0600) if there is none.

        Every opener of one file must pass the same ``capacity`` and ``probe``;
        a file that does not match raises ConfigError (see the module doc).
        ``clock`` must be one clock for every process (the default is).
        """
        if capacity < 1 or capacity >= 2**32:
            raise ValueError(f"capacity must be between 1 and 2**32 - 1 buckets, got {capacity}")
        if probe < 1:
            raise ValueError(f"probe must be at least 1 slot, got {probe}")
        probe = min(probe, capacity)
        path = Path(path)
        size = table_size(capacity)
        header = _HEADER.pack(MAGIC, VERSION, capacity, probe, SLOT_SIZE, boot_id(), -math.inf)
        fd = _open_or_create(path, header, size)
        try:
            _check_file(path, fd, size)
            table = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        try:
            _check_header(path, table, capacity, probe)
        except BaseException:
            table.close()
            os.close(fd)
            raise
        buckets = cls(path, fd, table, capacity, probe, clock)
        buckets._clear_if_rebooted()
        _reopen_after_fork(buckets)
        return buckets

    @property
    def path(self) -> Path:
        return self._path

    @property
    def capacity(self) -> int:
        return self._capacity

    def acquire_now(self, key: str, rate: float, burst: int, cost: int = 1) -> Decision:
        """Take ``cost`` tokens from ``key``'s bucket, or say when they will be there."""
        check_limit(rate, burst, cost)
        slot_key = self._hash(key)
        table = self._table
        self._lock()
        try:
            now = self._clock()
            offset, slot = self._find(slot_key, now)
            if slot is None:
                level, decision = take(float(burst), 0.0, rate, burst, cost)
            else:
                level, decision = take(slot[1], now - slot[2], rate, burst, cost)
            _SLOT.pack_into(table, offset, slot_key, level, now, now + (burst - level) / rate)
            if level < 1.0:
                until = now + (1.0 - level) / rate
                self._empty_until[0] = max(self._empty_until[0], until)
        finally:
            self._unlock()
        return decision

    def level(self, key: str, rate: float, burst: int) -> float:
        """Tokens in ``key``'s bucket now, taking none (``burst`` for an unknown key)."""
        check_limit(rate, burst, 1)
        slot_key = self._hash(key)
        self._lock()
        try:
            now = self._clock()
            _, slot = self._find(slot_key, now)
        finally:
            self._unlock()
        if slot is None:
            return float(burst)
        return min(float(burst), slot[1] + max(now - slot[2], 0.0) * rate)

    def any_empty(self) -> bool:
        """False when no bucket can hold less than one token now; True may be a false alarm.

        No lock and no probe: the cheap question to ask before :meth:`level`.
        """
        return self._clock() < self._empty_until[0]

    def used(self) -> int:
        """Slots ever used (a full scan, for tests and diagnostics; not for the request path)."""
        self._lock()
        try:
            return sum(
                1
                for index in range(self._capacity)
                if _SLOT.unpack_from(self._table, HEADER_SIZE + index * SLOT_SIZE)[0]
            )
        finally:
            self._unlock()

    def close(self) -> None:
        """Unmap and close; the table stays for the other workers. Idempotent."""
        if self._fd < 0:
            return
        self._empty_until.release()
        self._table.close()
        os.close(self._fd)
        self._fd = -1

    def _hash(self, key: str) -> int:
        slot_key = self._hashes.get(key)
        if slot_key is None:
            if len(self._hashes) >= _HASHES_KEPT:
                self._hashes.clear()
            slot_key = self._hashes[key] = key_hash(key)
        return slot_key

    def _find(
        self, slot_key: int, now: float
    ) -> tuple[int, tuple[int, float, float, float] | None]:
        """The offset of ``slot_key``'s slot and its contents, or the slot to take for it.

        Call with the lock held. A new key takes the first never-used or full
        slot of its window, else the one with the oldest stamp.
        """
        table = self._table
        capacity = self._capacity
        start = slot_key % capacity
        free = -1
        oldest, oldest_stamp = -1, math.inf
        for step in range(self._probe):
            offset = HEADER_SIZE + ((start + step) % capacity) * SLOT_SIZE
            slot = _SLOT.unpack_from(table, offset)
            if slot[0] == slot_key:
                return offset, slot
            if slot[0] == 0:
                return (free if free >= 0 else offset), None
            if free < 0:
                if slot[3] <= now:
                    free = offset
                elif slot[2] < oldest_stamp:
                    oldest, oldest_stamp = offset, slot[2]
        return (free if free >= 0 else oldest), None

    def _lock(self) -> None:
        if self._fd < 0:
            raise ValueError(f"the bucket table {self._path} is closed")
        self._thread_lock.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def _unlock(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def _clear_if_rebooted(self) -> None:
        """Forget a table whose stamps were read from another boot's monotonic clock."""
        now_boot = boot_id()
        self._lock()
        try:
            if self._table[_BOOT] != now_boot:
                self._table[HEADER_SIZE:] = bytes(len(self._table) - HEADER_SIZE)
                self._empty_until[0] = -math.inf
                self._table[_BOOT] = now_boot
        finally:
            self._unlock()

    def _after_fork(self) -> None:
        """In a forked child: a lock and a file description of its own."""
        self._thread_lock = threading.Lock()
        if self._fd < 0:
            return
        inherited = os.fstat(self._fd)
        fd = -1
        # /proc names the very file even if the path was replaced since.
        for source in (f"/proc/self/fd/{self._fd}", str(self._path)):
            try:
                fd = os.open(source, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            reopened = os.fstat(fd)
            if (reopened.st_dev, reopened.st_ino) == (inherited.st_dev, inherited.st_ino):
                break
            os.close(fd)
            fd = -1
        # Without a description of its own the child must not use the table:
        # the inherited one's lock is the parent's lock.
        os.close(self._fd)
        self._fd = fd
        if fd < 0:
            self._empty_until.release()
            self._table.close()


class NodeRateLimiter:
    """The RateLimiter of a node's workers: a limit is the node's, whichever worker is asked.

    Owns its table: :meth:`close` unmaps it (the file stays for the others).
    """

    def __init__(self, buckets: SharedBuckets) -> None:
        self._buckets = buckets

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        capacity: int = DEFAULT_CAPACITY,
        probe: int = DEFAULT_PROBE,
        clock: Callable[[], float] = time.monotonic,
    ) -> NodeRateLimiter:
        return cls(SharedBuckets.open(path, capacity=capacity, probe=probe, clock=clock))

    @property
    def buckets(self) -> SharedBuckets:
        return self._buckets

    async def acquire(self, key: str, rate: float, burst: int, cost: int = 1) -> Decision:
        return self._buckets.acquire_now(key, rate, burst, cost)

    async def close(self) -> None:
        self._buckets.close()


def _open_or_create(path: Path, header: bytes, size: int) -> int:
    """A descriptor on the table at ``path``, made whole under a temporary name if absent."""
    try:
        return os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot open the rate-limit table: {exc}") from exc
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot create the rate-limit table: {exc}") from exc
    try:
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, size)
        os.pwrite(fd, header, 0)
        os.link(temporary, path)
    except FileExistsError:
        # Another worker linked its table first: use that one.
        os.close(fd)
        return os.open(path, _OPEN_FLAGS)
    except BaseException:
        os.close(fd)
        raise
    finally:
        os.unlink(temporary)
    return fd


def _check_file(path: Path, fd: int, size: int) -> None:
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file"
    elif info.st_uid != os.geteuid():
        problem = f"belongs to user {info.st_uid}, not to this server's user {os.geteuid()}"
    elif info.st_mode & 0o077:
        problem = f"is open to other users (mode {stat.S_IMODE(info.st_mode):o}, expected 600)"
    elif info.st_size != size:
        problem = (
            f"is {info.st_size} bytes where this server's table is {size}: it is not a "
            "modelport rate-limit table, or was made by another version or capacity"
        )
    if problem is not None:
        raise ConfigError(str(path), "", f"{problem}; {_REMEDY}")


def _check_header(path: Path, table: mmap.mmap, capacity: int, probe: int) -> None:
    magic, version, file_capacity, file_probe, slot_size, _, _ = _HEADER.unpack_from(table, 0)
    if magic != MAGIC:
        problem = "is not a modelport rate-limit table (wrong header)"
    elif version != VERSION or slot_size != SLOT_SIZE:
        problem = f"is a table of format {version}, this server writes format {VERSION}"
    elif (file_capacity, file_probe) != (capacity, probe):
        problem = (
            f"holds {file_capacity} buckets probed {file_probe} deep, this server expects "
            f"{capacity} probed {probe} deep"
        )
    else:
        return
    raise ConfigError(str(path), "", f"{problem}; {_REMEDY}")


_REMEDY = (
    "stop every server that uses this directory and remove the file, or give this "
    "server a directory of its own"
)


def _reopen_after_fork(buckets: SharedBuckets) -> None:
    """Register the child's reopen without keeping the table alive for ever."""
    ref = weakref.ref(buckets)

    def after_in_child() -> None:
        alive = ref()
        if alive is not None:
            alive._after_fork()

    os.register_at_fork(after_in_child=after_in_child)
