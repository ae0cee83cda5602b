"""The management API refuses a query parameter it does not take (422), as a body refuses an
unknown field: `?limt=5` or `?status=pending` on a route that has no such filter would otherwise
answer as if it had not been asked, and the caller would act on a list that is not what it asked
for."""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import Depends
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import HTTPConnection

# Where a route keeps the names it takes, worked out at its first request: on the route itself,
# since an id would be reused by another app's route once this one is collected.
_ACCEPTED = "_fleetkeeper_accepted_query"


def _any_query() -> None:
    """The marker of a route that takes any query (see ANY_QUERY)."""


# In a route's (or router's) dependencies: the route takes query parameters it does not declare.
# For what another party writes the query of: the identity provider's return to the OpenID
# callback (`iss`, `session_state`, whatever it adds) and the health probes of load balancers.
ANY_QUERY = Depends(_any_query)


def _dependants(dependant: Dependant) -> list[Dependant]:
    found = [dependant]
    for dependency in dependant.dependencies:
        found += _dependants(dependency)
    return found


def accepts_any_query(route: APIRoute) -> bool:
    return any(dependant.call is _any_query for dependant in _dependants(route.dependant))


def _accepted(route: APIRoute) -> frozenset[str] | None:
    """The names the route takes, or None for any."""
    if not hasattr(route, _ACCEPTED):
        names = {
            param.alias for dependant in _dependants(route.dependant) for param in dependant.query_params
        }
        setattr(route, _ACCEPTED, None if accepts_any_query(route) else frozenset(names))
    accepted: frozenset[str] | None = getattr(route, _ACCEPTED)
    return accepted


def _refuse_unknown(connection: HTTPConnection) -> None:
    query = connection.scope.get("query_string")
    route = connection.scope.get("route")
    if not query or not isinstance(route, APIRoute):
        return
    accepted = _accepted(route)
    if accepted is None:
        return
    names = {name for name, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True)}
    unknown = sorted(names - accepted)
    if unknown:
        raise RequestValidationError(
            [
                {"loc": ("query", name), "msg": "Unknown query parameter", "type": "extra_forbidden"}
                for name in unknown
            ]
        )


# Given to every management router as it is included.
REFUSE_UNKNOWN_QUERY_PARAMETERS = Depends(_refuse_unknown)
