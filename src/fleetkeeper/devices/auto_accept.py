"""Whether an auto-accepting enrollment token accepts a device: it acts for the token's creator, so
it accepts only a device that they could accept themselves, now, with the identity it claims.

A device chooses the identity it claims, and dynamic groups used as scopes read that identity.
Accepted at once, it would land in the scope groups of people whom the token's creator does not
manage, with none of theirs deciding. So the token accepts a device only when its creator is still
an active user holding devices:manage in every group through which a scope reaches the accepted
device (everywhere, for a device in no group: as when the token was made). Otherwise the device
waits in the queue for an operator, never refused for it, and the audit log says why. See
docs/devices.md, "Enrollment"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access.service import Permission, Principal, get_user, user_grants
from fleetkeeper.core.errors import NotFoundError
from fleetkeeper.devices.models import EnrollmentToken
from fleetkeeper.devices.scopes import device_group_names, groups_not_managed

CREATOR_UNAVAILABLE = "creator_unavailable"
CREATOR_LACKS_DEVICES_MANAGE = "creator_lacks_devices_manage"


@dataclass(frozen=True)
class Withheld:
    """Why a device of an auto-accepting token waits for an operator instead."""

    reason: str  # CREATOR_UNAVAILABLE | CREATOR_LACKS_DEVICES_MANAGE
    detail: str
    groups: tuple[str, ...] = ()  # where the creator lacks devices:manage

    def as_details(self, token: EnrollmentToken) -> dict[str, Any]:
        # Not "token_id": the audit log redacts the values of keys that look like secrets.
        return {
            "enrolled_with": token.id,
            "creator": token.created_by,
            "reason": self.reason,
            "detail": self.detail,
            "groups": list(self.groups),
        }


async def withheld(session: AsyncSession, token: EnrollmentToken, device_id: str) -> Withheld | None:
    """None when the token's creator may accept the device: it was just added as accepted, with its
    claimed identity and in the token's group, in this transaction."""
    creator = await _active_creator(session, token.created_by)
    if creator is None:
        return Withheld(
            CREATOR_UNAVAILABLE,
            "the token's creator was deleted or disabled, so the token accepts no device by itself: "
            "an operator decides",
        )
    if creator.grants.scopes(Permission.DEVICES_MANAGE) is None:
        return None
    await session.flush()
    groups = await device_group_names(session, device_id, as_scope=True)
    if not groups:
        return Withheld(
            CREATOR_LACKS_DEVICES_MANAGE,
            "the device is in no group, which needs devices:manage on all devices, and the token's "
            "creator lacks it: an operator decides",
        )
    outside = groups_not_managed(creator, groups)
    if not outside:
        return None
    return Withheld(
        CREATOR_LACKS_DEVICES_MANAGE,
        f"with the identity it claims, the device is in groups where the token's creator lacks "
        f"devices:manage: {', '.join(outside)}; an operator who manages them decides",
        tuple(outside),
    )


async def _active_creator(session: AsyncSession, user_id: str | None) -> Principal | None:
    """The token's creator with their grants as they are now; None if deleted or disabled."""
    if user_id is None:
        return None
    try:
        user = await get_user(session, user_id)
    except NotFoundError:
        return None
    if user.is_disabled:
        return None
    grants = await user_grants(session, user.id)
    return Principal(user_id=user.id, username=user.username, grants=grants, method="enrollment_token")
