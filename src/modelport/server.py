"""The composition root: builds every part from a ServerConfig and runs them.

One event loop carries the REST server, the metrics server, the gRPC server
and the repository poller, all inside one task group. SIGTERM or SIGINT
starts a graceful stop: readiness turns false, listeners stop accepting,
requests in flight finish (up to ``shutdown_grace`` seconds), then models
are released. Nothing imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from modelport import __version__
from modelport.auth_setup import build_auth
from modelport.clock import Clock, SystemClock
from modelport.config.server import ServerConfig
from modelport.controlplane.announce import nobody
from modelport.controlplane.api import ManagementServices, build_api, docs_routes
from modelport.controlplane.audited import AuditedRepository
from modelport.controlplane.autoscaler import Autoscaler
from modelport.controlplane.canary import CanaryController
from modelport.controlplane.crypto.providers import key_provider_for
from modelport.controlplane.fleetlease import FleetLease
from modelport.controlplane.fleetsync import FleetSync, is_postgres
from modelport.controlplane.fleetwindows import FleetWindows
from modelport.controlplane.memory import node_budget
from modelport.controlplane.ondemand import IdleUnloader, busy
from modelport.controlplane.registry import IDLE_REASON, Registry
from modelport.controlplane.store import (
    AuditLog,
    CanaryStore,
    Database,
    KeyStore,
    NodeStore,
    PolicyStore,
)
from modelport.controlplane.store.windows import WindowStore
from modelport.controlplane.traffic import LOCAL, TrafficManager
from modelport.dataplane.admission import MemoryRateLimiter, RateLimiter
from modelport.dataplane.admission.audit import SERVER_WIDE
from modelport.dataplane.admission.residency import ResidencyGuard
from modelport.dataplane.admission.shared_buckets import NodeRateLimiter, SharedBuckets
from modelport.dataplane.admission.watch import Tally, TrafficWatch
from modelport.dataplane.cache import ResponseCache
from modelport.dataplane.pipeline import Pipeline
from modelport.dataplane.routing import Traffic
from modelport.dataplane.scheduled import ScheduledServable
from modelport.dataplane.transport.context import TransportContext
from modelport.dataplane.transport.grpc.server import (
    add_services,
    bind_grpc_server,
    mark_serving,
)
from modelport.dataplane.transport.http.app import build_app, build_metrics_app
from modelport.dataplane.transport.http.errors import http_status
from modelport.dataplane.transport.http.protocol import announce_direct_path, limited_protocol
from modelport.dataplane.transport.http.routes_logging import routes as logging_routes
from modelport.dataplane.transport.http.uvicorn_adapter import (
    UvicornServer,
    bound_tls_handshakes,
    uvicorn_server,
)
from modelport.dataplane.transport.listen import address_of, bind_listeners, port_of
from modelport.errors import ModelportError
from modelport.jobs_setup import build_jobs
from modelport.node.advertise import Advertiser, Placement, common_ready, default_name, local_ready
from modelport.node.forward import ProcessHost, SequenceRouter
from modelport.node.link import WAIT_S, NodeLink
from modelport.node.member import NodeMember
from modelport.observability.logs import LogControl, configure_logging
from modelport.observability.metrics import Metrics
from modelport.observability.payloads import PayloadLogger, retention_of
from modelport.observability.triton_metrics import LoadedVersion, TritonMetrics
from modelport.tls.material import TlsFiles
from modelport.tls.rotation import TlsRotation

log = logging.getLogger("modelport.server")

SERVER_NAME = "modelport"


def _uvicorn(
    app: object, config: ServerConfig, port: int, tls: TlsRotation | None = None
) -> UvicornServer:
    announce_direct_path(app)
    return uvicorn_server(
        app,
        host=config.host,
        port=port,
        protocol=limited_protocol(
            config.max_header_bytes,
            config.header_timeout,
            config.body_timeout,
            config.max_body_bytes,
            frozenset(config.trusted_proxy_identities),
        ),
        shutdown_grace=config.shutdown_grace,
        # The rotation's live context, shared by every listener and reloaded in place.
        ssl_context=(lambda: tls.context) if tls is not None else None,
    )


def build_tls(config: ServerConfig) -> TlsRotation | None:
    """The checked TLS material, or None without --tls-cert; ConfigError names a bad file."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    files = TlsFiles(
        config.tls_cert,
        config.tls_key,
        config.tls_client_ca,
        config.tls_client_auth == "required",
    )
    return TlsRotation.start(files, config.tls_reload_interval)


def build_limiter(
    config: ServerConfig, metrics: Metrics, member: NodeMember | None = None
) -> RateLimiter:
    """Buckets in Redis when several nodes must share limits, else in this process, or
    in a table every worker of this node maps (a limit is the node's, not a worker's)."""
    if config.redis_url is None:
        if member is not None:
            return NodeRateLimiter.open(member.directory / "buckets")
        return MemoryRateLimiter()
    from modelport.dataplane.admission.redis_limiter import RedisRateLimiter

    return RedisRateLimiter.from_url(
        config.redis_url, on_failure=metrics.rate_limit_store_failures.inc
    )


@dataclass
class Listeners:
    """Every port, bound and listening, before the servers that answer on them exist."""

    http: list[socket.socket]
    metrics: list[socket.socket] | None
    grpc: grpc.aio.Server
    grpc_port: int

    @property
    def http_port(self) -> int:
        return port_of(self.http)

    @property
    def metrics_port(self) -> int | None:
        return port_of(self.metrics) if self.metrics is not None else None


def bind_ports(config: ServerConfig, tls: TlsRotation | None, shared: bool = False) -> Listeners:
    """Bind REST, metrics and gRPC ports, in that order, before any model loads.

    A taken port raises ListenFailed naming it at once, instead of after every
    model has loaded; the ports already bound are released first. Until the
    servers start, the kernel queues connections (so a client waits rather than
    being refused while models load). ``shared``: a worker of a node, on ports
    its supervisor holds (SO_REUSEPORT).
    """
    http = bind_listeners(config.host, config.http_port, "HTTP", shared=shared)
    metrics: list[socket.socket] | None = None
    try:
        if config.metrics_port is not None:
            metrics = bind_listeners(config.host, config.metrics_port, "metrics", shared=shared)
        grpc_server, grpc_port = bind_grpc_server(config, tls, shared=shared)
    except BaseException:
        for sock in http + (metrics or []):
            sock.close()
        raise
    listeners = Listeners(http, metrics, grpc_server, grpc_port)
    for transport, address in bound_addresses(listeners):
        log.info("listening", extra={"transport": transport, "address": address})
    return listeners


def bound_addresses(listeners: Listeners) -> list[tuple[str, str]]:
    """(transport, address) of every socket listening, one per address a host resolved to.

    gRPC binds its port itself, on the addresses the same host resolves to,
    so its addresses are the REST sockets' hosts with its port.
    """
    http = [sock.getsockname()[:2] for sock in listeners.http]
    found = [("HTTP", address_of(host, port)) for host, port in http]
    found += [("gRPC", address_of(host, listeners.grpc_port)) for host, _ in http]
    for sock in listeners.metrics or []:
        found.append(("metrics", address_of(*sock.getsockname()[:2])))
    return found


def loaded_versions(registry: Registry) -> list[LoadedVersion]:
    """What Triton's metric names read of each ready version, at scrape time."""
    return [
        LoadedVersion(
            m.name,
            m.version,
            m.stats,
            m.servable.scheduler.queued if isinstance(m.servable, ScheduledServable) else 0,
            m.cached,
        )
        for m in registry.ready()
    ]


def _audited_logs(logs: LogControl, audit_log: AuditLog, link: NodeLink | None) -> LogControl:
    """``logs``, with each change a caller makes (REST's /v2/logging or gRPC's
    LogSettings) in the audit log as a server-wide event, and on every worker
    of a node."""

    async def record(actor: str | None, changed: dict[str, Any]) -> None:
        await asyncio.to_thread(
            audit_log.record, SERVER_WIDE, "logging.update", actor=actor or LOCAL, detail=changed
        )
        if link is not None:
            await link.logging_changed(actor, changed)

    return logs.audited(record)


def build_advertiser(
    config: ServerConfig,
    database: Database,
    registry: Registry,
    link: NodeLink | None,
    clock: Clock,
) -> Advertiser | None:
    """The node's fleet registration (``--advertise``); None when it is not in a fleet."""
    if config.advertise is None:
        return None

    async def ready() -> dict[str, list[str]]:
        own = local_ready(registry)
        if link is None:
            return own
        replies = await link.peers.broadcast("statistics", {}, WAIT_S)
        peers = [
            {str(entry.get("name")) for entry in r.result if isinstance(entry, dict)}
            for r in replies
            if r.ok and isinstance(r.result, list)
        ]
        return common_ready(own, peers)

    placement = Placement(
        name=config.node_name or default_name(config.advertise),
        http_url=config.advertise,
        grpc_address=config.advertise_grpc,
        region=config.region,
        group=config.group,
        weight=config.node_weight,
    )
    return Advertiser(NodeStore(database), placement, ready, clock, config.drain_seconds)


def build_fleet_sync(
    config: ServerConfig,
    database: Database,
    canary: CanaryController,
    traffic: Traffic,
    member: NodeMember | None,
) -> FleetSync | None:
    """Fleet-wide changes over PostgreSQL's NOTIFY; None on SQLite (one machine's store)."""
    if not is_postgres(config.state_url):
        return None
    assert config.state_url is not None
    # A node's workers share the origin, so they skip what one of them sent.
    where = member.directory if member is not None else f"pid {os.getpid()}"
    origin = f"{socket.gethostname()}:{where}"

    async def apply(op: str, model: str) -> None:
        await canary.sync(model)  # the canary as stored, then its traffic policy

    async def resync() -> None:
        stored = await asyncio.to_thread(canary.canaries.list_all)
        policies = await asyncio.to_thread(canary.policies.list_all)
        models = {c.model for c in stored} | {p.model for p in policies} | set(traffic.policies())
        for model in sorted(models):
            await canary.sync(model)

    return FleetSync(database, config.state_url, origin, apply, resync)


def repository_of(config: ServerConfig) -> Path:
    if config.repository is not None:
        return config.repository
    from modelport.examples import repository_path

    return repository_path()


def run(config: ServerConfig, member: NodeMember | None = None) -> None:
    """Serve on uvloop when it is installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config, member))
    else:
        uvloop.run(serve(config, member))


class _WorkerTag(logging.Filter):
    """Each log record of a node's worker names the worker."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


async def serve(config: ServerConfig, member: NodeMember | None = None) -> None:
    """Run until SIGTERM/SIGINT, then stop gracefully; ``member``: as a worker of a node."""
    # The CLI set the log up already; this makes the config's format and level
    # hold however the server was started (it replaces the earlier set-up).
    logs = configure_logging(config.log_level, config.log_format)
    if member is not None:
        logs.handler.addFilter(_WorkerTag(member.index))
    metrics = Metrics()
    repository = repository_of(config)
    tls = await asyncio.to_thread(build_tls, config)
    keys = await asyncio.to_thread(key_provider_for, config)
    database = await asyncio.to_thread(
        Database.open, config.state_url or Database.sqlite_url(config.data_dir)
    )
    # One store per aggregate, all over the one database.
    audit_log = AuditLog(database)
    policies = PolicyStore(database)
    canaries = CanaryStore(database)
    # One source of time for the request path and the control plane.
    clock = SystemClock()
    registry = Registry(
        repository,
        metrics,
        config.default_timeout,
        keys,
        config.region,
        strict_readiness=config.strict_readiness,
        clock=clock,
        cold_start_timeout=config.cold_start_timeout,
        memory=node_budget(config.memory_budget, config.workers, busy, audit_log, LOCAL),
    )
    # Before any model loads: a server that must not start (no credentials off
    # loopback) says so at once.
    # A node's workers count failed authentications in one table, so a peer blocked
    # by one worker is blocked by all.
    failures = SharedBuckets.open(member.directory / "authfail") if member is not None else None
    auth = await asyncio.to_thread(
        build_auth, config, KeyStore(database), audit_log, registry, metrics, failures
    )
    # The live routing table; the control plane keeps it in step with the store.
    traffic = Traffic(metrics)
    manager = TrafficManager(policies, audit_log, registry, traffic)
    canary = CanaryController(canaries, policies, manager, traffic, clock=clock)
    # Stored choices come before the first scan, so versions that policies,
    # canaries and operators asked for load with everything else.
    await asyncio.to_thread(canary.load_stored)
    await asyncio.to_thread(manager.pin_stored)
    listeners = bind_ports(config, tls, shared=member is not None)
    link: NodeLink | None = None
    if member is not None:
        # On the bus before loading, so no change another worker makes meanwhile is missed.
        link = NodeLink(member, registry, manager, canary, logs, metrics, traffic)
        manager.announce = canary.announce = link.announce
        canary.windows = link.node_window
        registry.sequence_router = SequenceRouter(link.peers, member.index, member.count)
        registry.process_host = ProcessHost(
            link.peers, member.index, member.count, config.cold_start_timeout
        )
        await link.bus.start()
    fleet = build_fleet_sync(config, database, canary, traffic, member)
    fleet_lease = FleetLease(fleet.dsn) if fleet is not None else None
    fleet_windows: FleetWindows | None = None
    if fleet is not None:
        manager.announce = canary.announce = fleet.announce(manager.announce)
        # The canary leader judges on every node's requests.
        fleet_windows = FleetWindows(
            WindowStore(database), canaries, fleet.origin, canary.windows, clock.wall
        )
        canary.windows = fleet_windows.window
    log.info("loading models", extra={"repository": str(repository)})
    await registry.start()
    if link is not None and member is not None and member.restarted:
        await link.copy_state()
    await manager.start()
    # Everything built so far (sessions, configs, libraries) lives as long as
    # the server. Freezing it keeps the collector's full passes from walking
    # it again and again, which would stall requests and stretch the tail
    # latency of a small model many times over (docs/performance.md).
    gc.collect()
    gc.freeze()
    cache = ResponseCache(config.cache_size) if config.cache_size > 0 else None
    limiter = build_limiter(config, metrics, member)
    payloads = PayloadLogger(
        config.payload_log_dir or config.data_dir / "payloads", metrics, config.region, keys
    )
    payloads.review(registry.ready())
    payloads.start()
    residency = ResidencyGuard(
        config.region,
        config.tenant_residency,
        auth.audit,
        lambda model: metrics.residency_refused.labels(model).inc(),
    )
    pipeline = Pipeline(
        registry,
        metrics,
        cache,
        clock=clock,
        traffic=traffic,
        limiter=limiter,
        payloads=payloads,
        residency=residency,
    )
    registry.steps.bind(pipeline)  # ensembles run their steps through the pipeline
    log_control = _audited_logs(logs, audit_log, link)
    jobs = build_jobs(config, database, pipeline, http_status, clock)
    ctx = TransportContext(
        pipeline=pipeline,
        table=registry,
        repository=AuditedRepository(
            registry, audit_log, manager, link.announce if link is not None else nobody
        ),
        metrics=metrics,
        server_name=SERVER_NAME,
        server_version=__version__,
        max_body_bytes=config.max_body_bytes,
        max_elements=config.max_elements,
        log_control=log_control,
        announce=link.announce if link is not None else None,
        jobs=jobs,
    )
    if link is not None:
        if auth.gate is not None and isinstance(auth.gate.watch, TrafficWatch):
            # The detectors watch the node's traffic, on the lease holder only.
            link.watch, link.tally = auth.gate.watch, Tally()
            auth.gate.watch = link.tally
        link.regions = ctx.shared_memory
        metrics.peers = link.peer_metrics
        ctx.info.peer_statistics = link.peer_statistics
    api = build_api(
        ManagementServices(
            registry,
            policies,
            canaries,
            audit_log,
            manager,
            canary,
            link.announce if link is not None else nobody,
            jobs,
        ),
        http_status,
    )
    if config.triton_metrics:
        metrics.add_exposition(TritonMetrics(lambda: loaded_versions(registry)).render)
    autoscaler = Autoscaler(registry.ready, clock)
    metrics.add_exposition(autoscaler.render)
    extra_routes = [*docs_routes(api), *logging_routes(log_control)]
    http = _uvicorn(build_app(ctx, api, extra_routes, auth.guard), config, config.http_port, tls)
    metrics_http = (
        _uvicorn(build_metrics_app(metrics, auth.metrics_guard), config, config.metrics_port, tls)
        if config.metrics_port is not None
        else None
    )
    grpc_server = listeners.grpc
    grpc_health = add_services(
        grpc_server, ctx, auth.gate, frozenset(config.trusted_proxy_identities)
    )
    await grpc_server.start()
    await mark_serving(grpc_health)

    async def record_idle_unload(name: str, version: str, idle_s: float) -> None:
        detail = {"version": version, "idle_s": round(idle_s, 3)}
        await asyncio.to_thread(
            audit_log.record, name, "model.unload", actor=LOCAL, detail=detail, reason=IDLE_REASON
        )

    idle = IdleUnloader(registry, config.idle_unload, clock, record_idle_unload)
    advertiser = build_advertiser(config, database, registry, link, clock)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if tls is not None:
        loop.add_signal_handler(signal.SIGHUP, tls.trigger)  # reload the certificate now
        bound_tls_handshakes(loop, config.header_timeout)  # before uvicorn creates listeners

    async def poll_repository() -> None:
        assert config.poll_interval is not None
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), config.poll_interval)
            if not stop.is_set():
                try:
                    before = registry.index(False)
                    await registry.poll()
                    if link is not None and registry.index(False) != before:
                        await link.announce("poll", {})
                except Exception:
                    log.exception("repository poll failed")

    async def lead() -> None:
        """The node's single jobs (one server's, or the lease holder's of a node)."""
        if link is not None:
            if not await link.lease.take(stop):
                return
            # The store holds the canaries' progress as the last leader left it.
            await asyncio.to_thread(canary.load_stored)
            log.info("leading the node: canary controller and repository poller")
        async with asyncio.TaskGroup() as jobs:
            jobs.create_task(lead_canaries())
            if advertiser is not None:
                jobs.create_task(advertiser.run(stop))
            if fleet_windows is not None:
                jobs.create_task(fleet_windows.run(stop))
            if config.poll_interval is not None:
                jobs.create_task(poll_repository())

    async def lead_canaries() -> None:
        """The canary controller, on one node of a fleet (the lease holder) at a time."""
        if fleet_lease is None:
            await canary.run(stop)
            return

        async def run_while_held(lost: asyncio.Event) -> None:
            try:
                await asyncio.to_thread(canary.load_stored)  # as the last leader left them
            except ModelportError as exc:
                log.error("could not read the stored canaries", extra={"error": exc.message})
            await canary.run(lost)

        await fleet_lease.lead(stop, run_while_held)

    async def shutdown() -> None:
        await stop.wait()
        if advertiser is not None:
            # Serve on while the fleet's gateway sees the node draining and moves away.
            if advertiser.running:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(advertiser.withdrawn.wait(), config.drain_seconds + 5)
            else:
                await asyncio.sleep(config.drain_seconds)
            pipeline.admission.leaving = True
        log.info("shutting down: finishing requests in flight")
        registry.stop_accepting()
        await grpc_health.enter_graceful_shutdown()
        http.should_exit = True
        if metrics_http is not None:
            metrics_http.should_exit = True
        await grpc_server.stop(config.shutdown_grace)

    log.info(
        "serving",
        extra={
            "host": config.host,
            "http_port": listeners.http_port,
            "grpc_port": listeners.grpc_port,
            "metrics_port": listeners.metrics_port,
            "models": sorted({m.name for m in registry.ready()}),
        },
    )
    if member is not None:
        member.ready()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(http.serve(sockets=listeners.http))
        if metrics_http is not None:
            tasks.create_task(metrics_http.serve(sockets=listeners.metrics))
        tasks.create_task(lead())
        if link is not None:
            tasks.create_task(link.report(stop))
        tasks.create_task(shutdown())
        tasks.create_task(autoscaler.run(stop))
        tasks.create_task(idle.run(stop))
        tasks.create_task(jobs.run(stop))
        tasks.create_task(auth.run(stop))
        if fleet is not None:
            tasks.create_task(fleet.run(stop))
        if tls is not None:
            tasks.create_task(tls.run(stop))
        tasks.create_task(payloads.run_retention(lambda: retention_of(registry.ready()), stop))
    if link is not None:
        await link.bus.close()
        link.lease.release()
    if failures is not None:
        failures.close()
    await traffic.close()  # shadow copies still running are cancelled, not drained
    await registry.close()
    await limiter.close()
    await asyncio.to_thread(payloads.close)  # what was sampled before the stop is written
    await asyncio.to_thread(database.close)
    log.info("stopped")
