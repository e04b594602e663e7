"""A Unix socket only one process may talk to: the gateway's channel to its own Envoy.

The residency check answers which tenant, and so which regions, a bearer
token belongs to. Served on a TCP port, any local process could ask it (a
token oracle). Here it is a Unix socket instead, guarded twice: the kernel
lets only the gateway's user open it (mode 0600, in a folder only that user
can enter), and each connection is accepted only from the process the
gateway names, its Envoy, as the kernel reports the peer (``SO_PEERCRED``).
The second guard is the one that holds against the same user's other
processes, and against root, whom file modes do not stop.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from pathlib import Path

from modelport.errors import ConfigError

#: Longest path a Unix socket address holds on Linux (sun_path, with its NUL).
MAX_PATH_BYTES = 107

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def bind_private(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600 from the moment it exists.

    ``path``'s folder must be private to this user already (mkdtemp makes it
    so): that is what keeps the name from being raced or replaced.
    """
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        raise ConfigError(
            str(path), "", f"a Unix socket path must be at most {MAX_PATH_BYTES} bytes (TMPDIR)"
        )
    folder = path.parent.stat()
    if folder.st_uid != os.geteuid() or stat.S_IMODE(folder.st_mode) & 0o077:
        raise ConfigError(str(path.parent), "", "the folder of a private socket must be 0700")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # On Linux the file takes the unbound socket's mode (less the umask) at
        # bind: there is no moment at which it is 0666.
        os.fchmod(sock.fileno(), 0o600)
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def peer_pid(sock: socket.socket) -> int | None:
    """The process at the other end of a connected Unix socket (None: not known)."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except (OSError, AttributeError):
        return None
    pid = int(_PEERCRED.unpack(raw)[0])
    return pid if pid > 0 else None
