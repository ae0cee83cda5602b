"""Grant sets: union over roles, narrowing by assignment scope, token subsets, deny by default."""

from __future__ import annotations

from fleetkeeper.access.permissions import BUILTIN_ROLES, GrantSet, Permission

P = Permission


def grants(**by_permission: list[str] | None) -> GrantSet:
    return GrantSet.from_json(
        {"permission": name.replace("_", ":", 1), "scopes": scopes} for name, scopes in by_permission.items()
    )


def test_nothing_is_allowed_by_default() -> None:
    empty = GrantSet.empty()
    assert not any(empty.allows(permission) for permission in Permission)


def test_scoped_grant_allows_only_inside_its_groups() -> None:
    held = grants(devices_deploy=["plant-3"])
    assert held.allows(P.DEVICES_DEPLOY)  # somewhere
    assert held.allows(P.DEVICES_DEPLOY, ["plant-3", "line-1"])
    assert not held.allows(P.DEVICES_DEPLOY, ["plant-4"])
    assert not held.allows(P.DEVICES_DEPLOY, [])  # a device in no group needs an unscoped grant
    assert not held.allows(P.DEVICES_READ)


def test_union_widens_and_unscoped_wins() -> None:
    a = grants(devices_read=["a"])
    b = grants(devices_read=["b"], releases_read=None)
    both = a.union(b)
    assert both.scopes(P.DEVICES_READ) == frozenset({"a", "b"})
    assert both.scopes(P.RELEASES_READ) is None
    assert a.union(grants(devices_read=None)).scopes(P.DEVICES_READ) is None


def test_narrowing_by_assignment_applies_to_the_right_kind() -> None:
    admin = GrantSet.from_json(BUILTIN_ROLES["admin"][1])
    narrowed = admin.narrowed(frozenset({"plant-3"}), None)
    assert narrowed.scopes(P.DEVICES_MANAGE) == frozenset({"plant-3"})
    assert narrowed.scopes(P.RELEASES_MANAGE) is None
    assert narrowed.scopes(P.USERS_MANAGE) is None  # not scopable: untouched
    disjoint = grants(devices_read=["a"]).narrowed(frozenset({"b"}), None)
    assert not disjoint.allows(P.DEVICES_READ)


def test_intersection_and_covers_for_api_tokens() -> None:
    owner = grants(devices_read=None, devices_deploy=["a", "b"])
    token = grants(devices_deploy=["a"], audit_read=None)
    assert not owner.covers(token)
    effective = token.intersection(owner)
    assert effective.scopes(P.DEVICES_DEPLOY) == frozenset({"a"})
    assert not effective.allows(P.AUDIT_READ)
    assert owner.covers(grants(devices_deploy=["b"]))
    assert not owner.covers(grants(devices_deploy=None))
    assert owner.covers(grants(devices_read=["x"]))


def test_json_round_trip() -> None:
    original = grants(devices_read=["b", "a"], users_manage=None)
    assert GrantSet.from_json(original.to_json()) == original
    assert original.to_json() == [
        {"permission": "devices:read", "scopes": ["a", "b"]},
        {"permission": "users:manage", "scopes": None},
    ]
