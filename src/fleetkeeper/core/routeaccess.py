"""Every route declares who may call it. The declaration is a marked FastAPI dependency, so the
same object both enforces the rule and lets a test walk the app and find routes that declare none."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from fastapi.dependencies.models import Dependant
from starlette.routing import BaseRoute

_ATTRIBUTE = "__fleetkeeper_access_rule__"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class AccessRule:
    # public: anyone; authenticated: any signed-in user; permission: the listed permissions;
    # device: a client certificate from the fleet CA.
    kind: Literal["public", "authenticated", "permission", "device"]
    permissions: tuple[str, ...] = ()
    allow_pending: bool = False


def mark(rule: AccessRule, dependency: F) -> F:
    setattr(dependency, _ATTRIBUTE, rule)
    return dependency


def marked(rule: AccessRule) -> Callable[[F], F]:
    """Decorator form of `mark`."""

    def decorate(dependency: F) -> F:
        return mark(rule, dependency)

    return decorate


async def _anyone() -> None:
    return None


PUBLIC_RULE = AccessRule("public")
public_dependency = mark(PUBLIC_RULE, _anyone)


def declared_rules(route: BaseRoute) -> list[AccessRule]:
    dependant: Dependant | None = getattr(route, "dependant", None)
    if dependant is None:
        return []
    found: list[AccessRule] = []
    stack = [dependant]
    while stack:
        current = stack.pop()
        rule = getattr(current.call, _ATTRIBUTE, None)
        if isinstance(rule, AccessRule):
            found.append(rule)
        stack.extend(current.dependencies)
    return found
