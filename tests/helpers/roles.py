"""What each built-in role may do, as the access and device tests check it."""

from __future__ import annotations

from fleetkeeper.access.permissions import Permission

# Written out by hand on purpose: this is the contract, not a copy of BUILTIN_ROLES.
EXPECTED: dict[str, set[str]] = {
    "admin": {p.value for p in Permission},
    "release-manager": {"releases:read", "releases:upload", "releases:manage", "devices:read"},
    "deployments-manager": {"devices:read", "devices:deploy", "releases:read"},
    "troubleshooter": {"devices:read", "devices:connect", "devices:configure"},
    "read-only": {"devices:read", "releases:read"},
}
