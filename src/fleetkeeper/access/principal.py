"""Who is asking: an authenticated user, with the grants that hold for this request."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fleetkeeper.access.permissions import GrantSet, Permission
from fleetkeeper.audit.service import Actor
from fleetkeeper.core.errors import ForbiddenError


@dataclass(frozen=True)
class Principal:
    user_id: str
    username: str
    grants: GrantSet
    method: str  # "password", "oidc" or "api_token"
    session_id: str | None = None
    api_token_id: str | None = None
    pending: tuple[str, ...] = ()
    address: str | None = None

    @property
    def actor(self) -> Actor:
        return Actor(kind="user", id=self.user_id, name=self.username, address=self.address)

    @property
    def rate_limit_key(self) -> str:
        return self.api_token_id or self.session_id or self.user_id

    @property
    def in_session(self) -> bool:
        """Signed in with a password or through SSO (not an API token)."""
        return self.session_id is not None

    def ensure_session(self) -> None:
        """Raises 403 for an API token: changes to the account itself need its owner signed in.
        (A token narrowed to releases:read must not become its owner's password or second factor.)"""
        if not self.in_session:
            raise ForbiddenError(
                "an API token cannot do this: sign in with your password or single sign-on",
                code="session_required",
            )

    def can(self, permission: Permission, scope: Iterable[str] | None = None) -> bool:
        return self.grants.allows(permission, scope)

    def ensure(
        self, permission: Permission, scope: Iterable[str] | None = None, *, on: str | None = None
    ) -> None:
        """Raises 403 unless the permission holds (within one of `scope`'s groups or tags)."""
        if self.can(permission, scope):
            return
        where = f" on {on}" if on else ""
        raise ForbiddenError(
            f"this needs the permission {permission.value}{where}", permission=permission.value
        )
