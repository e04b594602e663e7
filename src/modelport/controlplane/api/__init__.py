"""The management API, ``/api/v1``: versions, traffic, canaries, history."""

from modelport.controlplane.api.app import ManagementServices, build_api, docs_routes

__all__ = ["ManagementServices", "build_api", "docs_routes"]
