"""The networks an account signed in from lately: where its owner usually is.

A correct password from one of them is checked even while the account as a whole waits out failures
from everywhere (signin.py): an attacker spread over many networks then keeps its owner out only of
networks the owner has not used within `sign_in_known_network_days`. The last `KEPT_PER_ACCOUNT`
are kept per account, as network prefixes (never addresses) with the time of the last sign-in.

They are stored as they are, not hashed: each sign-in's full address is already in its session and
in the audit log, so a keyed hash would hide nothing those do not tell, and would need a key that
every replica shares and the database does not hold.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access.models import SignInNetwork
from fleetkeeper.core.db import utcnow

KEPT_PER_ACCOUNT = 5
_LONGEST = 64  # the column's width: an IPv6 prefix fits; anything longer is no IP network


def _stored(network: str) -> str:
    return network[:_LONGEST]


async def is_known(session: AsyncSession, user_id: str, network: str, days: int) -> bool:
    """Whether the account signed in from `network` within the last `days` (never, for 0)."""
    if days <= 0:
        return False
    last = await session.scalar(
        select(SignInNetwork.last_sign_in_at).where(
            SignInNetwork.user_id == user_id, SignInNetwork.network == _stored(network)
        )
    )
    return last is not None and utcnow() - last < timedelta(days=days)


async def remember(session: AsyncSession, user_id: str, network: str, now: datetime) -> None:
    """Notes a sign-in from `network`, keeping the account's last few. Call it with the user's row
    locked (two sign-ins at once would both insert)."""
    known = await session.get(SignInNetwork, (user_id, _stored(network)))
    if known is None:
        session.add(SignInNetwork(user_id=user_id, network=_stored(network), last_sign_in_at=now))
    else:
        known.last_sign_in_at = now
    await session.flush()
    older = (
        select(SignInNetwork.network)
        .where(SignInNetwork.user_id == user_id)
        .order_by(SignInNetwork.last_sign_in_at.desc(), SignInNetwork.network)
        .offset(KEPT_PER_ACCOUNT)
    )
    stale = list((await session.scalars(older)).all())
    if stale:
        await session.execute(
            delete(SignInNetwork).where(SignInNetwork.user_id == user_id, SignInNetwork.network.in_(stale))
        )
