"""The names a grant gives as scopes: checks that other domains register on them, and where grants
give a name.

access knows a scope only as a name of some kind (`Permission.scope_kind`: a device group, a
release tag). What a name stands for belongs to another domain, which imports access (never the
other way round): so that domain has a check registered by the composition root, as devices has
for device groups that cannot scope a permission (server/wiring.py). A check raises a
ProblemError that names what is wrong and what to do; it is asked wherever scopes are given: a
user's role assignment, a role's grants, an API token's grants."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access.models import ApiToken, Role, RoleAssignment
from fleetkeeper.access.permissions import GrantSet
from fleetkeeper.core.db import utcnow

# Asked with the session of the change and the names given as scopes of one kind (sorted).
ScopeCheck = Callable[[AsyncSession, list[str]], Awaitable[None]]
_checks: dict[str, list[ScopeCheck]] = {}


def register_scope_check(kind: str, check: ScopeCheck) -> None:
    """How another domain refuses scopes of `kind` that would not do what they say. Registered
    twice, kept once."""
    registered = _checks.setdefault(kind, [])
    if check not in registered:
        registered.append(check)


def scope_checks(kind: str) -> tuple[ScopeCheck, ...]:
    return tuple(_checks.get(kind, ()))


def scope_names(grants: GrantSet) -> dict[str, set[str]]:
    """The names these grants give as scopes, by kind."""
    names: dict[str, set[str]] = {}
    for permission, scopes in grants.grants.items():
        if permission.scope_kind and scopes:
            names.setdefault(permission.scope_kind, set()).update(scopes)
    return names


async def check_scopes(session: AsyncSession, names: dict[str, set[str]]) -> None:
    """Asks every registered check about the names of its kind; the first to refuse raises."""
    for kind, given in sorted(names.items()):
        for check in scope_checks(kind):
            await check(session, sorted(given))


async def given_as_scope(session: AsyncSession, kind: str, name: str) -> bool:
    """Whether a role assignment, a role's grants or a live API token gives `name` as a scope of
    `kind`: what a new object under that name would become the scope of. (The lists are JSON,
    read and searched here alike on both databases: asked only when such an object is created.)"""
    narrowing = {"device_group": RoleAssignment.device_groups, "release_tag": RoleAssignment.release_tags}
    if kind in narrowing and any(
        name in (names or ()) for names in await session.scalars(select(narrowing[kind]))
    ):
        return True
    live_tokens = select(ApiToken.grants).where(ApiToken.revoked_at.is_(None), ApiToken.expires_at > utcnow())
    for grants in [*await session.scalars(select(Role.grants)), *await session.scalars(live_tokens)]:
        if name in scope_names(GrantSet.from_json(grants)).get(kind, set()):
            return True
    return False
