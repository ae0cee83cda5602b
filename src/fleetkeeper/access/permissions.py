"""Permissions, their scopes, grant sets and the built-in roles.

A grant gives a permission, either everywhere (scopes None) or only within named device groups
(devices:*) or release tags (releases:*). A user's grants are the union of their roles' grants,
each narrowed by the scope of the role assignment. Anything not granted is denied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Permission(StrEnum):
    DEVICES_READ = "devices:read"
    DEVICES_MANAGE = "devices:manage"
    DEVICES_DEPLOY = "devices:deploy"
    DEVICES_CONNECT = "devices:connect"
    DEVICES_CONFIGURE = "devices:configure"
    RELEASES_READ = "releases:read"
    RELEASES_UPLOAD = "releases:upload"
    RELEASES_MANAGE = "releases:manage"
    USERS_MANAGE = "users:manage"
    AUDIT_READ = "audit:read"

    @property
    def scope_kind(self) -> str | None:
        """What a scope of this permission names: device groups, release tags, or nothing."""
        if self.value.startswith("devices:"):
            return "device_group"
        if self.value.startswith("releases:"):
            return "release_tag"
        return None


Scopes = frozenset[str] | None  # None: everywhere


def _intersect(a: Scopes, b: Scopes) -> Scopes:
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def _union(a: Scopes, b: Scopes) -> Scopes:
    if a is None or b is None:
        return None
    return a | b


@dataclass(frozen=True)
class GrantSet:
    """Permission → where it holds. Immutable; combine with `union` and `intersection`."""

    grants: Mapping[Permission, Scopes]

    @classmethod
    def empty(cls) -> GrantSet:
        return cls({})

    @classmethod
    def everything(cls) -> GrantSet:
        return cls(dict.fromkeys(Permission))

    @classmethod
    def from_json(cls, items: Iterable[Mapping[str, Any]]) -> GrantSet:
        result = cls.empty()
        for item in items:
            scopes = item.get("scopes")
            single = cls({Permission(item["permission"]): None if scopes is None else frozenset(scopes)})
            result = result.union(single)
        return result

    @classmethod
    def assigned(
        cls,
        role_grants: Iterable[Mapping[str, Any]],
        device_groups: Iterable[str] | None,
        release_tags: Iterable[str] | None,
    ) -> GrantSet:
        """A role's grants as given to a user: narrowed by the assignment's groups and tags."""
        return cls.from_json(role_grants).narrowed(
            None if device_groups is None else frozenset(device_groups),
            None if release_tags is None else frozenset(release_tags),
        )

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {"permission": permission.value, "scopes": None if scopes is None else sorted(scopes)}
            for permission, scopes in sorted(self.grants.items())
        ]

    def union(self, other: GrantSet) -> GrantSet:
        merged: dict[Permission, Scopes] = dict(self.grants)
        for permission, scopes in other.grants.items():
            merged[permission] = _union(merged[permission], scopes) if permission in merged else scopes
        return GrantSet(merged)

    def intersection(self, other: GrantSet) -> GrantSet:
        common: dict[Permission, Scopes] = {}
        for permission, scopes in self.grants.items():
            if permission in other.grants:
                narrowed = _intersect(scopes, other.grants[permission])
                if narrowed is None or narrowed:
                    common[permission] = narrowed
        return GrantSet(common)

    def narrowed(self, device_groups: Scopes, release_tags: Scopes) -> GrantSet:
        """The grants of a role assignment limited to some device groups and release tags."""
        by_kind = {"device_group": device_groups, "release_tag": release_tags}
        result: dict[Permission, Scopes] = {}
        for permission, scopes in self.grants.items():
            kind = permission.scope_kind
            narrowed = _intersect(scopes, by_kind[kind]) if kind else scopes
            if narrowed is None or narrowed:
                result[permission] = narrowed
        return GrantSet(result)

    def allows(self, permission: Permission, scope: Iterable[str] | None = None) -> bool:
        """With `scope` None: held anywhere at all. Otherwise: held in at least one of the given
        groups or tags (an object in no group is reached only by an unscoped grant)."""
        if permission not in self.grants:
            return False
        held = self.grants[permission]
        if held is None or scope is None:
            return True
        return not held.isdisjoint(scope)

    def scopes(self, permission: Permission) -> Scopes:
        """Where a permission holds; an empty set when it does not hold at all."""
        return self.grants.get(permission, frozenset())

    def covers(self, other: GrantSet) -> bool:
        """Whether everything `other` grants is granted here too (API tokens are such a subset)."""
        for permission, scopes in other.grants.items():
            if permission not in self.grants:
                return False
            held = self.grants[permission]
            if held is None:
                continue
            if scopes is None or not scopes <= held:
                return False
        return True


def _grants(*permissions: Permission) -> list[dict[str, Any]]:
    return [{"permission": permission.value, "scopes": None} for permission in permissions]


P = Permission
BUILTIN_ROLES: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "admin": ("Everything, everywhere.", _grants(*Permission)),
    "release-manager": (
        "Uploads, signs off and manages releases; sees devices.",
        _grants(P.RELEASES_READ, P.RELEASES_UPLOAD, P.RELEASES_MANAGE, P.DEVICES_READ),
    ),
    "deployments-manager": (
        "Deploys releases to devices.",
        _grants(P.DEVICES_READ, P.DEVICES_DEPLOY, P.RELEASES_READ),
    ),
    "troubleshooter": (
        "Opens terminals on devices and changes their configuration.",
        _grants(P.DEVICES_READ, P.DEVICES_CONNECT, P.DEVICES_CONFIGURE),
    ),
    "read-only": ("Sees devices and releases.", _grants(P.DEVICES_READ, P.RELEASES_READ)),
}
