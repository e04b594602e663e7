"""The registered system shared-memory regions, per caller.

A region is a span ``[offset, offset + byte_size)`` of a POSIX shared-memory
segment (``/dev/shm/<key>``) that a same-host client created and filled.
The client controls the segment, so everything about it is treated as
hostile:

* the name and key are checked, the limits applied, before anything is
  opened; a key may not hold ``/`` (one leading ``/``, as ``shm_open`` takes
  it, is allowed), nor name modelport's own segments (``mport_`` for process
  instances' tensors, ``sem.`` for POSIX semaphores);
* the segment is opened without following links and without blocking, and
  must be a regular file at least ``offset + byte_size`` long;
* a region belongs to the caller (identity and tenant) that registered it;
  to every other caller it does not exist: not in status, not usable, and
  unregistering it is the no-op that unregistering a missing name is;
* while a key is registered by one caller, no other caller may register it
  (the server would otherwise read one tenant's tensors for another);
* a region in use by a request in flight stays open until that request
  ends (a use count), whatever unregisters it meanwhile.

The segment is never mapped into the server: tensors move with ``pread`` and
``pwrite`` on the segment's descriptor (``session.py``), so a segment the
client truncates at any moment costs a short read, never a SIGBUS.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass, field
from typing import NamedTuple

from modelport.dataplane.runtime.shm import NAME_PREFIX
from modelport.errors import Conflict, InvalidRequest, NotFound
from modelport.types import Identity

#: Where POSIX shared-memory objects live on Linux.
SHM_DIR = "/dev/shm"

#: Regions one caller may hold at once (each holds one file descriptor).
MAX_REGIONS_PER_OWNER = 64
#: Regions the server holds at once, all callers together.
MAX_REGIONS = 1024
#: Bytes one caller may have registered at once, summed over its regions.
MAX_BYTES_PER_OWNER = 16 << 30
#: Bytes registered at once, all callers together.
MAX_BYTES = 64 << 30
#: The longest region name and key accepted.
MAX_NAME_LENGTH = 255

#: Key prefixes refused: modelport's process-instance segments, and POSIX
#: semaphores (``sem.<name>``, which multiprocessing creates for the server).
RESERVED_PREFIXES = (NAME_PREFIX, "sem.")

#: Who owns a region: (identity id, tenant), or None with authentication off.
Owner = tuple[str, str | None] | None


def owner_of(identity: Identity | None) -> Owner:
    """The owner a caller's regions are filed under."""
    return None if identity is None else (identity.id, identity.tenant)


class RegionStatus(NamedTuple):
    name: str
    key: str
    offset: int
    byte_size: int


@dataclass(eq=False)
class Region:
    """One registered region and its open segment; ``users`` requests hold it."""

    name: str
    key: str
    offset: int
    byte_size: int
    fd: int
    owner: Owner
    users: int = 0
    retired: bool = field(default=False)

    @property
    def status(self) -> RegionStatus:
        return RegionStatus(self.name, self.key, self.offset, self.byte_size)


def _printable(text: str) -> bool:
    return text.isprintable() and "\0" not in text


def check_name(name: object) -> str:
    """A region name: non-empty printable text of at most MAX_NAME_LENGTH characters."""
    if not isinstance(name, str) or not name:
        raise InvalidRequest("a shared-memory region needs a non-empty name")
    if len(name) > MAX_NAME_LENGTH or not _printable(name):
        raise InvalidRequest(
            f"region name must be printable and at most {MAX_NAME_LENGTH} characters"
        )
    return name


def segment_name(key: object) -> str:
    """The file name under SHM_DIR a key names; refuses paths and reserved names."""
    if not isinstance(key, str) or not key:
        raise InvalidRequest("'key' must be the shared-memory segment's name")
    name = key[1:] if key.startswith("/") else key
    if (
        not name
        or "/" in name
        or name in (".", "..")
        or len(name) > MAX_NAME_LENGTH
        or not _printable(name)
    ):
        raise InvalidRequest(
            f"key {key!r} is not a shared-memory segment name: printable, at most "
            f"{MAX_NAME_LENGTH} characters, no '/' except one leading"
        )
    if name.startswith(RESERVED_PREFIXES):
        raise InvalidRequest(f"key {key!r} names a segment reserved for the server's own use")
    return name


def check_span(offset: object, byte_size: object) -> tuple[int, int]:
    """Register's offset and byte_size: integers, byte_size at least 1."""
    if type(offset) is not int or offset < 0:
        raise InvalidRequest("'offset' must be a non-negative integer")
    if type(byte_size) is not int or byte_size < 1:
        raise InvalidRequest("'byte_size' must be a positive integer")
    if offset + byte_size > MAX_BYTES:
        raise InvalidRequest(
            f"offset {offset} + byte_size {byte_size} is past the limit of {MAX_BYTES} bytes"
        )
    return offset, byte_size


class Registry:
    """Every caller's regions; thread-safe (both transports may share it)."""

    def __init__(
        self,
        shm_dir: str = SHM_DIR,
        max_regions_per_owner: int = MAX_REGIONS_PER_OWNER,
        max_regions: int = MAX_REGIONS,
        max_bytes_per_owner: int = MAX_BYTES_PER_OWNER,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.shm_dir = shm_dir
        self.max_regions_per_owner = max_regions_per_owner
        self.max_regions = max_regions
        self.max_bytes_per_owner = max_bytes_per_owner
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._regions: dict[Owner, dict[str, Region]] = {}
        #: segment file name -> (owner, how many of its regions use it)
        self._keys: dict[str, tuple[Owner, int]] = {}
        self._count = 0
        self._bytes = 0

    # ------------------------------------------------------------ the API

    def register(self, owner: Owner, name: object, key: object, offset: object,
                 byte_size: object) -> None:  # fmt: skip
        """Register ``[offset, offset + byte_size)`` of segment ``key`` as ``name``."""
        name = check_name(name)
        segment = segment_name(key)
        assert isinstance(key, str)
        start, size = check_span(offset, byte_size)
        with self._lock:
            mine = self._regions.get(owner, {})
            if name in mine:
                raise Conflict(f"shared-memory region {name!r} is already registered")
            if len(mine) >= self.max_regions_per_owner:
                raise InvalidRequest(
                    f"a caller may register at most {self.max_regions_per_owner} "
                    "shared-memory regions; unregister some first"
                )
            if self._count >= self.max_regions:
                raise InvalidRequest("the server holds as many shared-memory regions as it may")
            held = sum(r.byte_size for r in mine.values())
            if held + size > self.max_bytes_per_owner:
                raise InvalidRequest(
                    f"registering {size} more bytes would pass the limit of "
                    f"{self.max_bytes_per_owner} bytes a caller may register"
                )
            if self._bytes + size > self.max_bytes:
                raise InvalidRequest(
                    f"registering {size} more bytes would pass the server's limit of "
                    f"{self.max_bytes} registered bytes"
                )
            holder = self._keys.get(segment)
            if holder is not None and holder[0] != owner:
                raise InvalidRequest(
                    f"key {key!r} is registered by another caller; use a segment of your own"
                )
            fd = self._open(segment, key, start + size)
            region = Region(name, key, start, size, fd, owner)
            self._regions.setdefault(owner, {})[name] = region
            self._keys[segment] = (owner, (holder[1] if holder else 0) + 1)
            self._count += 1
            self._bytes += size

    def unregister(self, owner: Owner, name: str | None = None) -> None:
        """Unregister one region of ``owner``, or all of them; a missing name is no error."""
        with self._lock:
            mine = self._regions.get(owner)
            if not mine:
                return
            names = list(mine) if name is None else [name] if name in mine else []
            for n in names:
                self._retire(mine.pop(n))
            if not mine:
                del self._regions[owner]

    def status(self, owner: Owner, name: str | None = None) -> list[RegionStatus]:
        """``owner``'s regions (or the one named); NotFound when the name is not one."""
        with self._lock:
            mine = self._regions.get(owner, {})
            if name is None:
                return [r.status for r in mine.values()]
            region = mine.get(name)
        if region is None:
            raise NotFound(f"no shared-memory region {name!r} is registered")
        return [region.status]

    def acquire(self, owner: Owner, name: str, where: str) -> Region:
        """Hold ``owner``'s region ``name`` for a request; :meth:`release` it after."""
        with self._lock:
            region = self._regions.get(owner, {}).get(name)
            if region is None:
                raise InvalidRequest(f"{where}: no shared-memory region {name!r} is registered")
            region.users += 1
            return region

    def release(self, region: Region) -> None:
        with self._lock:
            region.users -= 1
            if region.retired and region.users == 0:
                self._close(region)

    def close(self) -> None:
        """Unregister every region (server shutdown)."""
        with self._lock:
            owners = list(self._regions)
        for owner in owners:
            self.unregister(owner)

    def everything(self) -> list[tuple[Owner, RegionStatus]]:
        """Every caller's regions: what a new worker of a node copies from a peer."""
        with self._lock:
            return [
                (owner, region.status)
                for owner, mine in self._regions.items()
                for region in mine.values()
            ]

    @property
    def counts(self) -> tuple[int, int]:
        """(regions registered, bytes registered), all callers together."""
        return self._count, self._bytes

    # ---------------------------------------------------------- internals

    def _open(self, segment: str, key: str, end: int) -> int:
        path = os.path.join(self.shm_dir, segment)
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise InvalidRequest(f"no shared-memory segment has key {key!r}") from None
        except OSError as exc:
            raise InvalidRequest(
                f"cannot open shared-memory segment {key!r}: {exc.strerror}"
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidRequest(f"{key!r} is not a shared-memory segment")
            if info.st_size < end:
                raise InvalidRequest(
                    f"shared-memory segment {key!r} holds {info.st_size} bytes; the region "
                    f"ends at byte {end}"
                )
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _retire(self, region: Region) -> None:
        """Take ``region`` out of the tables (lock held); close it once no request holds it."""
        region.retired = True
        self._count -= 1
        self._bytes -= region.byte_size
        segment = segment_name(region.key)
        owner, uses = self._keys[segment]
        if uses <= 1:
            del self._keys[segment]
        else:
            self._keys[segment] = (owner, uses - 1)
        if region.users == 0:
            self._close(region)

    @staticmethod
    def _close(region: Region) -> None:
        if region.fd >= 0:
            os.close(region.fd)
            region.fd = -1
