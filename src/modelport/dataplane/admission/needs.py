"""What a route or an rpc needs, declared on the thing that answers it.

Each REST endpoint and each gRPC method carries an :class:`Access`: the role
its caller must hold, and which of its parameters names the model that role
applies to. The transports read the declaration of the route a request
matched, so adding a route means declaring its role next to it, and one that
declares nothing is refused (the transports check every route when they are
built, and a test walks them all)::

    @needs(Role.INVOKER, model="model")
    async def predict(request: Request) -> Response: ...

The model is read from the matched route's parameters, never re-parsed from
the raw path, and before the model is resolved: a refusal is the same whether
the model exists or not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from modelport.types import Role

E = TypeVar("E")

#: The attribute an endpoint's declaration is kept in.
_ATTRIBUTE = "__modelport_access__"


@dataclass(frozen=True, slots=True)
class Access:
    """The role a route or rpc needs, and the parameter naming the model it acts on."""

    role: Role | None
    """The least role a caller must hold; None for a route anyone may call (health probes)."""
    model: str | None = None
    """The path parameter (REST) or message field (gRPC) naming the model, if any."""

    def model_in(self, params: Mapping[str, Any]) -> str | None:
        """The model named by ``params`` (a route's path parameters); None when it names none.

        A route that serves both a listing and one model (Triton's statistics)
        declares the parameter and has it only on the per-model path.
        """
        if self.model is None:
            return None
        value = params.get(self.model)
        return str(value) if value else None


def declare(access: Access) -> Callable[[E], E]:
    """A decorator recording ``access`` on an endpoint (a function, method or class)."""

    def mark(endpoint: E) -> E:
        setattr(endpoint, _ATTRIBUTE, access)
        return endpoint

    return mark


def needs(role: Role | None, model: str | None = None) -> Callable[[E], E]:
    """Declare that an endpoint needs ``role`` on the model its ``model`` parameter names."""
    return declare(Access(role, model))


def declared(endpoint: object) -> Access | None:
    """What ``endpoint`` declared it needs; None when it declared nothing (refused)."""
    access = getattr(endpoint, _ATTRIBUTE, None)
    return access if isinstance(access, Access) else None
