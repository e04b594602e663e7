"""Traffic routing in the data plane: A/B splits, sticky callers, shadow copies.

The control plane sets a ``TrafficPolicy`` per model on the server's one
``Traffic`` and reads each version's ``WindowSnapshot``; the Pipeline asks
``Traffic`` where a request without a version goes. A request that names a
version always gets exactly that version.
"""

from modelport.dataplane.routing.choose import choose_version
from modelport.dataplane.routing.policy import Route, Shadow, TrafficPolicy
from modelport.dataplane.routing.traffic import HeaderLookup, RoutedModel, Traffic
from modelport.dataplane.routing.window import WindowSnapshot

__all__ = [
    "HeaderLookup",
    "Route",
    "RoutedModel",
    "Shadow",
    "Traffic",
    "TrafficPolicy",
    "WindowSnapshot",
    "choose_version",
]
