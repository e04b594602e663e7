"""Room for Envoy's file watches: one inotify instance per watched configuration file.

Envoy watches each file-based xDS subscription (listeners, clusters, each
route table, each cluster's endpoints) with an inotify instance of its own,
and Linux limits the instances one user may hold
(``fs.inotify.max_user_instances``, 128 by default). A fleet with many
regions has many cluster variants; past the limit Envoy does not report an
error, it aborts. So the gateway counts first: at start a configuration that
cannot fit is refused with the sysctl to raise, and a later change that
would not fit is not written (Envoy keeps serving the configuration it has).
"""

from __future__ import annotations

import os
from pathlib import Path

LIMIT_FILE = Path("/proc/sys/fs/inotify/max_user_instances")
#: Instances Envoy holds besides its xDS subscriptions (its runtime and admin watches).
ENVOY_OWN = 4


def limit() -> int | None:
    """This machine's per-user limit, or None where there is none to read (not Linux)."""
    try:
        return int(LIMIT_FILE.read_text().strip())
    except (OSError, ValueError):
        return None


def in_use(uid: int | None = None) -> int:
    """Inotify instances the processes of ``uid`` (default: this user) hold now."""
    uid = os.getuid() if uid is None else uid
    count = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if proc.stat().st_uid != uid:
                continue
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == "anon_inode:inotify":
                    count += 1
        except OSError:  # the process ended, or its fds are not ours to read
            continue
    return count


def shortfall(watched_files: int, held_by_envoy: int = 0) -> str | None:
    """Why ``watched_files`` subscriptions will not fit, or None when they will.

    ``held_by_envoy``: instances a running Envoy already holds, which it gives
    back when it moves to the new configuration.
    """
    cap = limit()
    if cap is None:
        return None
    needed = watched_files + ENVOY_OWN
    free = cap - in_use() + held_by_envoy
    if needed <= free:
        return None
    return (
        f"Envoy needs {needed} inotify instances (one per configuration file it watches: "
        f"{watched_files} for this fleet) and this user has {max(free, 0)} of "
        f"fs.inotify.max_user_instances={cap} free; raise the limit, e.g. "
        f"sysctl -w fs.inotify.max_user_instances={max(cap * 2, cap - free + needed + 64)}"
    )
