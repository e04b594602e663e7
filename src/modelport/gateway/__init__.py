"""The fleet gateway: modelport's control plane for Envoy in front of many nodes.

Envoy carries every request; this package only decides what Envoy's
configuration says (from the fleet file and the nodes' readiness) and keeps
the Envoy process running.
"""
