"""The gateway process: follow the nodes, keep Envoy's files current, keep Envoy running."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from modelport.errors import ConfigError, ListenFailed
from modelport.gateway import inotify
from modelport.gateway.authz import authz_enabled, fleet_regions
from modelport.gateway.authz_server import AuthzServer, KeyTenants, store_keys
from modelport.gateway.clusters import EDS_FOLDER
from modelport.gateway.envoy_config import CDS_FILE, Listen, XdsWriter, bootstrap, render
from modelport.gateway.envoy_process import EnvoyProcess, find_envoy
from modelport.gateway.fleet import FleetSpec
from modelport.gateway.follow import POLL_INTERVAL, Follower, store_reader
from modelport.gateway.status import residency_refusals
from modelport.gateway.views import NodeView

log = logging.getLogger("modelport.gateway")

#: The residency check's socket, in the gateway's private folder.
AUTHZ_SOCKET = "authz.sock"

#: Most seconds routes wait for Envoy to warm the clusters they name.
WARM_LIMIT_S = 5.0
#: Seconds given to Envoy to apply new routes before the clusters they left are removed.
ROUTES_SETTLE_S = 1.0


def _cluster_names(cds: dict[str, Any] | None) -> set[str]:
    if cds is None:
        return set()
    return {str(r.get("name")) for r in cds.get("resources", [])}


#: Most seconds Envoy may take to answer on its admin port after starting.
START_TIMEOUT_S = 30.0


def check_ports_free(listen: Listen) -> None:
    """Fails at start, naming the flag, when a port is taken (Envoy would only log it)."""
    for flag, host, port in (
        ("--http-port", listen.host, listen.http_port),
        ("--grpc-port", listen.host, listen.grpc_port),
        ("--admin-port", "127.0.0.1", listen.admin_port),
    ):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise ListenFailed(
                    f"{flag}: cannot listen on {host}:{port}: {exc.strerror or exc}"
                ) from None


class Gateway:
    """One running gateway; ``run`` returns the exit status."""

    def __init__(
        self,
        spec: FleetSpec,
        listen: Listen,
        token: str | None = None,
        on_ready: Callable[[str], None] = print,
    ) -> None:
        self.spec = spec
        self.listen = listen
        self.token = token
        self.on_ready = on_ready
        self._stop = asyncio.Event()
        self._views: list[NodeView] = []
        self._refusals = 0
        self._unfit = 0
        """The file count of the last change refused for want of inotify instances."""

    async def run(self) -> int:
        binary = find_envoy()
        check_ports_free(self.listen)
        reader = store_reader(self.spec.state_url) if self.spec.state_url else None
        follower = Follower(self.spec, self.token, reader)
        # Private to this user (mkdtemp makes it 0700): Envoy's files and the
        # check's socket live here.
        workdir = Path(tempfile.mkdtemp(prefix="modelport-gateway-"))
        boot = workdir / "bootstrap.json"
        envoy = EnvoyProcess(binary, boot, self.listen.admin_port)
        authz: AuthzServer | None = None
        loop = asyncio.get_running_loop()
        try:
            authz = await self._start_authz(workdir, envoy)
            xds = workdir / "xds"
            writer = XdsWriter(xds)
            self._views = follower.initial()
            files = render(self.spec, self._views, xds, self.listen)[1]
            problem = await asyncio.to_thread(inotify.shortfall, len(files))
            if problem is not None:
                raise ConfigError("this machine", "fs.inotify.max_user_instances", problem)
            writer.write(files)
            boot.write_text(json.dumps(bootstrap(xds, self.listen), indent=1), encoding="utf-8")
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            envoy.start()
            if not await self._wait_answering(envoy):
                raise ListenFailed("envoy did not start (its log is above)")
            self.on_ready(self._ready_line())
            await self._follow(follower, writer, xds, envoy)
            return 0
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            envoy.stop()
            await follower.close()
            if authz is not None:
                await authz.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    async def _start_authz(self, workdir: Path, envoy: EnvoyProcess) -> AuthzServer | None:
        """The residency check Envoy asks, for fleets whose callers' tenants matter.

        It answers Envoy's process only: what it tells (a token's tenant) is no
        business of any other program on the machine.
        """
        if not authz_enabled(self.spec):
            return None
        url = self.spec.state_url
        tenants = KeyTenants(store_keys(url)) if url is not None else None
        server = AuthzServer(
            lambda: fleet_regions(self.spec, self._views),
            self.spec.tenant_residency,
            tenants,
            allowed_peer=lambda pid: pid == envoy.pid and envoy.alive(),
        )
        await server.start(workdir / AUTHZ_SOCKET)
        self.listen = replace(self.listen, authz_socket=str(server.path))
        return server

    def _ready_line(self) -> str:
        listen = self.listen
        tls = self.spec.tls is not None and self.spec.tls.server_cert is not None
        return (
            f"gateway ready: REST {'https' if tls else 'http'}://{listen.host}:{listen.http_port}, "
            f"gRPC{' (TLS)' if tls else ''} {listen.host}:{listen.grpc_port}, "
            f"admin http://127.0.0.1:{listen.admin_port} "
            f"({len(self.spec.nodes)} fleet-file nodes)"
        )

    async def _wait_answering(self, envoy: EnvoyProcess) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and not self._stop.is_set():
            if not envoy.alive():
                return False
            if await asyncio.to_thread(envoy.answering):
                return True
            await asyncio.sleep(0.1)
        return self._stop.is_set()

    async def _follow(
        self, follower: Follower, writer: XdsWriter, xds: Path, envoy: EnvoyProcess
    ) -> None:
        admin = httpx.AsyncClient(timeout=1.0)
        counter = asyncio.create_task(self._count_refusals_forever(admin))
        loop = asyncio.get_running_loop()
        # Polls start every POLL_INTERVAL, however long one takes: a change
        # is seen within one interval, not one interval plus the work.
        next_poll = loop.time()
        try:
            while not self._stop.is_set():
                views = await follower.poll()
                if views != self._views:
                    self._log_changes(self._views, views)
                    files = render(self.spec, views, xds, self.listen)[1]
                    held = len(writer.written) + inotify.ENVOY_OWN
                    problem = (
                        await asyncio.to_thread(inotify.shortfall, len(files), held)
                        if len(files) > len(writer.written)
                        else None
                    )
                    if problem is not None:
                        # Envoy would abort on the new files: it keeps what it has,
                        # and the change is tried again (and logged once) each poll.
                        if self._unfit != len(files):
                            log.error("envoy configuration not updated: %s", problem)
                            self._unfit = len(files)
                    else:
                        self._unfit = 0
                        self._views = views
                        changed = await self._apply(writer, files, admin)
                        log.info("envoy configuration updated: %d files", len(changed))
                envoy.ensure_running()
                next_poll = max(next_poll + POLL_INTERVAL, loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), next_poll - loop.time())
        finally:
            counter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await counter
            await admin.aclose()

    async def _apply(
        self, writer: XdsWriter, files: dict[str, dict[str, Any]], admin: httpx.AsyncClient
    ) -> list[str]:
        """Write a new configuration so that no route ever names a cluster Envoy lacks.

        Envoy applies each watched file on its own, and a new cluster is
        usable only once warm (its endpoints read, one round of health
        checks): routes written with it would answer 503 ("no cluster") for
        that moment. So clusters come first, old ones kept; the routes follow
        once Envoy lists every new cluster as active; clusters no route names
        any more go last.
        """
        old = writer.current(CDS_FILE)
        new = files[CDS_FILE]
        old_names = _cluster_names(old)
        added = _cluster_names(new) - old_names
        removed = old_names - _cluster_names(new)
        if old is None or not (added or removed):
            return writer.write(files)
        union = dict(new)
        union["resources"] = list(new["resources"]) + [
            r for r in old["resources"] if r.get("name") in removed
        ]
        clusters_first = {
            name: body
            for name, body in files.items()
            if name == CDS_FILE or name.startswith(EDS_FOLDER + "/")
        }
        changed = writer.write({**clusters_first, CDS_FILE: union}, prune=False)
        if added:
            await self._until_active(admin, added)
        changed += writer.write({**files, CDS_FILE: union}, prune=False)
        if removed:
            await asyncio.sleep(ROUTES_SETTLE_S)  # the routes away from them applied
        changed += writer.write(files)
        return sorted(set(changed))

    async def _until_active(self, admin: httpx.AsyncClient, names: set[str]) -> None:
        """Until Envoy's admin lists every cluster in ``names`` (warm), or a few seconds."""
        url = f"http://127.0.0.1:{self.listen.admin_port}/clusters?format=json"
        deadline = time.monotonic() + WARM_LIMIT_S
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                data = (await admin.get(url)).json()
                active = {c.get("name") for c in data.get("cluster_statuses", [])}
                if names <= active:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            await asyncio.sleep(0.05)
        log.warning("envoy did not list %d new clusters as warm in time", len(names))

    async def _count_refusals_forever(self, admin: httpx.AsyncClient) -> None:
        while True:
            await self._count_refusals(admin)
            await asyncio.sleep(1.0)

    def _log_changes(self, old: list[NodeView], new: list[NodeView]) -> None:
        before = {v.name: v for v in old}
        after = {v.name: v for v in new}
        for name in sorted(after.keys() - before.keys()):
            log.info("node %s joined (region %s)", name, after[name].region)
        for name in sorted(before.keys() - after.keys()):
            log.info("node %s left", name)
        for name in sorted(after.keys() & before.keys()):
            was, now = before[name], after[name]
            if was.reachable != now.reachable:
                log.info("node %s is %s", name, "reachable" if now.reachable else "unreachable")
            if set(was.models) != set(now.models):
                log.info("node %s ready models: %s", name, ", ".join(sorted(now.models)) or "none")

    async def _count_refusals(self, admin: httpx.AsyncClient) -> None:
        url = f"http://127.0.0.1:{self.listen.admin_port}/stats"
        try:
            answer = await admin.get(
                url, params={"format": "json", "filter": "upstream_cx_none_healthy"}
            )
            stats: Any = answer.json()
        except (httpx.HTTPError, ValueError):
            return
        count = residency_refusals(stats)
        if count > self._refusals:
            log.warning(
                "residency refusals: %d (+%d): no node in a region allowed for the data",
                count,
                count - self._refusals,
            )
        # Lower after an Envoy restart (its counters start again at zero).
        self._refusals = count
