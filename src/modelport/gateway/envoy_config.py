"""Envoy's configuration as pure functions of (fleet spec, node views).

The bootstrap is written once; everything that changes while running lives
in files Envoy watches (listeners, clusters, routes, one endpoints file per
cluster), so a change reaches Envoy without a restart or a dropped
connection. ``render`` returns every such file; ``XdsWriter`` writes the
ones whose content changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.gateway.authz import authz_cluster, authz_filters, unchecked_mark
from modelport.gateway.clusters import EDS_FOLDER, cluster_config, eds_file_name, load_assignment
from modelport.gateway.fleet import FleetSpec
from modelport.gateway.fleet_tls import TlsSpec, to_clients
from modelport.gateway.routes import (
    HEADER_MUTATION,
    RESTRICTED_MARK,
    grpc_routes,
    http_routes,
)
from modelport.gateway.topology import Topology, build_topology
from modelport.gateway.views import NodeView

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
HCM = "envoy.filters.network.http_connection_manager"
HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network."
    "http_connection_manager.v3.HttpConnectionManager"
)
HEADER_MUTATION_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
)

FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"

LDS_FILE = "lds.json"
CDS_FILE = "cds.json"
RDS_FILES = {"http": "rds_http.json", "grpc": "rds_grpc.json"}

#: The body of a residency refusal; clients match on it.
RESIDENCY_REFUSAL = '{"error": "no node in a region allowed for this data is available"}'

#: REST callers' deadline header (the node reads it too).
TIMEOUT_HEADER = "modelport-timeout-ms"


@dataclass(frozen=True)
class Listen:
    """Where the gateway listens and logs."""

    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    admin_port: int = 9901
    access_log: str = "/dev/stdout"
    #: The gateway's residency check service's Unix socket (None: requests are not checked).
    authz_socket: str | None = None


def _path_source(path: Path) -> dict[str, Any]:
    return {
        "resource_api_version": "V3",
        "path_config_source": {
            "path": str(path),
            "watched_directory": {"path": str(path.parent)},
        },
    }


def bootstrap(xds_dir: Path, listen: Listen) -> dict[str, Any]:
    """Admin on loopback; listeners and clusters from watched files."""
    return {
        "node": {"id": "modelport-gateway", "cluster": "modelport-gateway"},
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen.admin_port}}
        },
        "dynamic_resources": {
            "lds_config": _path_source(xds_dir / LDS_FILE),
            "cds_config": _path_source(xds_dir / CDS_FILE),
        },
    }


def _access_log(path: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": FILE_LOG_TYPE,
                "path": path,
                "log_format": {
                    "json_format": {
                        "time": "%START_TIME%",
                        "request_id": "%REQ(X-REQUEST-ID)%",
                        "method": "%REQ(:METHOD)%",
                        "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                        "status": "%RESPONSE_CODE%",
                        "grpc_status": "%GRPC_STATUS_NUMBER%",
                        "upstream_host": "%UPSTREAM_HOST%",
                        "cluster": "%UPSTREAM_CLUSTER%",
                        "duration_ms": "%DURATION%",
                        "flags": "%RESPONSE_FLAGS%",
                        "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
                    }
                },
            },
        }
    ]


def _timeout_from_header() -> dict[str, Any]:
    """Copies the caller's modelport-timeout-ms to the header Envoy's router obeys."""
    return {
        "name": HEADER_MUTATION,
        "typed_config": {
            "@type": HEADER_MUTATION_TYPE,
            "mutations": {
                "request_mutations": [
                    {
                        "append": {
                            "header": {
                                "key": "x-envoy-upstream-rq-timeout-ms",
                                "value": f"%REQ({TIMEOUT_HEADER})%",
                            },
                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                            "keep_empty_value": False,
                        }
                    }
                ]
            },
        },
    }


def _residency_reply() -> dict[str, Any]:
    return {
        "mappers": [
            {
                "filter": {
                    "and_filter": {
                        "filters": [
                            {"response_flag_filter": {"flags": ["UH"]}},
                            {
                                "header_filter": {
                                    "header": {"name": RESTRICTED_MARK, "present_match": True}
                                }
                            },
                        ]
                    }
                },
                "status_code": 503,
                "body": {"inline_string": RESIDENCY_REFUSAL},
                "body_format_override": {
                    "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
                    "content_type": "application/json",
                },
            }
        ]
    }


def listener(
    name: str, port: int, xds_dir: Path, listen: Listen, tls: TlsSpec | None = None
) -> dict[str, Any]:
    manager: dict[str, Any] = {
        "@type": HCM_TYPE,
        "stat_prefix": name,
        "codec_type": "AUTO",
        "rds": {
            "route_config_name": name,
            "config_source": _path_source(xds_dir / RDS_FILES[name]),
        },
        "http_filters": [
            _timeout_from_header(),
            *authz_filters(listen.authz_socket),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
        "access_log": _access_log(listen.access_log),
        "local_reply_config": _residency_reply(),
        # The caller's request id is kept when it sends one, so logs join up across hops.
        "preserve_external_request_id": True,
        # The caller's own address is appended to X-Forwarded-For: nodes that trust the
        # gateway's certificate take it from there (the rightmost entry), so their
        # brute-force blocking, rate limits and audit log see the caller, not the gateway.
        "use_remote_address": True,
    }
    if listen.authz_socket is not None:
        manager["early_header_mutation_extensions"] = unchecked_mark()
    chain: dict[str, Any] = {"filters": [{"name": HCM, "typed_config": manager}]}
    transport = to_clients(tls)
    if transport is not None:
        chain["transport_socket"] = transport
    return {
        "@type": LISTENER_TYPE,
        "name": name,
        "address": {"socket_address": {"address": listen.host, "port_value": port}},
        "filter_chains": [chain],
    }


def _discovery(resources: list[dict[str, Any]]) -> dict[str, Any]:
    body = json.dumps(resources, sort_keys=True)
    return {"version_info": hashlib.sha256(body.encode()).hexdigest()[:16], "resources": resources}


def render(
    spec: FleetSpec, views: list[NodeView], xds_dir: Path, listen: Listen
) -> tuple[Topology, dict[str, dict[str, Any]]]:
    """Every watched file for this input: relative path -> content."""
    topology = build_topology(spec, views)
    files: dict[str, dict[str, Any]] = {
        LDS_FILE: _discovery(
            [
                listener("http", listen.http_port, xds_dir, listen, spec.tls),
                listener("grpc", listen.grpc_port, xds_dir, listen, spec.tls),
            ]
        ),
        RDS_FILES["http"]: _discovery([http_routes(spec, topology)]),
        RDS_FILES["grpc"]: _discovery([grpc_routes(spec, topology)]),
    }
    clusters = []
    for plan in topology.clusters.values():
        clusters.append(cluster_config(spec, plan, str(xds_dir)))
        files[f"{EDS_FOLDER}/{eds_file_name(plan.name)}"] = _discovery(
            [load_assignment(plan, topology)]
        )
    if listen.authz_socket is not None:
        clusters.append(authz_cluster(listen.authz_socket))
    files[CDS_FILE] = _discovery(clusters)
    return topology, files


#: Endpoints before clusters before routes: nothing names a thing that is not there yet.
_WRITE_ORDER = (EDS_FOLDER + "/", CDS_FILE, "rds_", LDS_FILE)


def _rank(name: str) -> int:
    for index, prefix in enumerate(_WRITE_ORDER):
        if name.startswith(prefix):
            return index
    return len(_WRITE_ORDER)


class XdsWriter:
    """Writes the watched files atomically, and only those whose content changed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._written: dict[str, str] = {}
        (folder / EDS_FOLDER).mkdir(parents=True, exist_ok=True)

    @property
    def written(self) -> list[str]:
        """The files Envoy is watching now (relative paths)."""
        return list(self._written)

    def current(self, name: str) -> dict[str, Any] | None:
        """What was last written to ``name`` (None: nothing)."""
        text = self._written.get(name)
        return None if text is None else dict(json.loads(text))

    def write(self, files: dict[str, dict[str, Any]], *, prune: bool = True) -> list[str]:
        """Writes what changed; returns the relative paths written.

        ``prune``: also delete the files written before that ``files`` lacks.
        """
        changed: list[str] = []
        for name in sorted(files, key=lambda n: (_rank(n), n)):
            text = json.dumps(files[name], indent=1, sort_keys=True)
            if self._written.get(name) == text:
                continue
            target = self.folder / name
            temp = target.with_name(f".{target.name}.tmp")
            temp.write_text(text, encoding="utf-8")
            # A rename is atomic and is what the directory watch reacts to:
            # Envoy never reads a half-written file.
            temp.replace(target)
            self._written[name] = text
            changed.append(name)
        for name in [n for n in self._written if prune and n not in files]:
            (self.folder / name).unlink(missing_ok=True)
            del self._written[name]
        return changed
