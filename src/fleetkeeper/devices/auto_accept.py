"""What an enrollment token does for its creator: it puts a device in its group only when they
could put it there themselves, now, and an auto-accepting one accepts only a device that they could
accept themselves, now, with the identity it claims.

A device chooses the identity it claims, and dynamic groups used as scopes read that identity.
Accepted at once, it would land in the scope groups of people whom the token's creator does not
manage, with none of theirs deciding. So the token accepts a device only when its creator is still
an active user holding devices:manage in every group through which a scope reaches the accepted
device (everywhere, for a device in no group: as when the token was made). Otherwise the device
waits in the queue for an operator, never refused for it, and the audit log says why. Likewise a
token's group that would move the device into or out of a dynamic group reading `group` where the
creator lacks devices:manage: the device waits outside the group. See docs/devices.md,
"Enrollment"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access.service import Principal, get_user, user_grants
from fleetkeeper.core.errors import NotFoundError
from fleetkeeper.devices.models import Device, EnrollmentToken, GroupMember
from fleetkeeper.devices.scopes import unmanaged_once_accepted, watching_moves

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


async def withheld(session: AsyncSession, token: EnrollmentToken, device: Device) -> Withheld | None:
    """None when the token's creator may accept the device (scopes.unmanaged_once_accepted, the rule
    an operator accepting by hand follows): it was just added, with its claimed identity and in the
    token's group, in this transaction."""
    creator = await _active_creator(session, token.created_by)
    if creator is None:
        return _creator_unavailable("accepts no device by itself")
    outside = await unmanaged_once_accepted(session, creator, device)
    if outside is None:
        return None
    if not outside:
        return Withheld(
            CREATOR_LACKS_DEVICES_MANAGE,
            "the device is in no group, which needs devices:manage on all devices, and the token's "
            "creator lacks it: an operator decides",
        )
    return Withheld(
        CREATOR_LACKS_DEVICES_MANAGE,
        f"with the identity it claims, the device is in groups where the token's creator lacks "
        f"devices:manage: {', '.join(outside)}; an operator who manages them decides",
        tuple(outside),
    )


async def join_token_group(session: AsyncSession, token: EnrollmentToken, device: Device) -> Withheld | None:
    """Puts a new (pending) device in its token's static group, for the token's creator: unless
    that moves it into or out of groups where they lack devices:manage (a dynamic group that reads
    `group`, scopes.watching_moves), or they are gone. Then the device stays out of the group, in
    the queue, and the Withheld says why."""
    if token.group_id is None:
        return None
    creator = await _active_creator(session, token.created_by)
    if creator is None:
        return _creator_unavailable("puts no device in its group")
    async with watching_moves(session, creator, device.id) as moves:
        member = GroupMember(group_id=token.group_id, device_id=device.id)
        session.add(member)
    if not moves.outside:
        return None
    await session.delete(member)
    await session.flush()
    return Withheld(
        CREATOR_LACKS_DEVICES_MANAGE,
        f"the token's group moves the device into or out of groups where the token's creator lacks "
        f"devices:manage: {', '.join(moves.outside)}; the device waits outside it for an operator",
        tuple(moves.outside),
    )


def _creator_unavailable(what: str) -> Withheld:
    return Withheld(
        CREATOR_UNAVAILABLE,
        f"the token's creator was deleted or disabled, so the token {what}: an operator decides",
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
