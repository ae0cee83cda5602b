"""Keep the release of a deployment that has not ended: releases asks this module before it deletes
one (docs/deployments.md, "Deleting a release").

A scheduled, active or paused deployment still sends its release to devices, so its release is not
deleted (409 release_in_use). A finished or aborted one sends nothing more: its release may go, and
the deployment's pages keep naming it (a deleted release's row stays, marked deleted). The refusal
names the deployments the caller sees, the oldest few, and tells nothing of the others but that
they exist."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access.service import Principal
from fleetkeeper.deployments import visibility
from fleetkeeper.deployments.models import Deployment
from fleetkeeper.releases import service as releases

ENDED_STATUSES = ("finished", "aborted")
NAMED_UP_TO = 3


def _count(query: Select[Any]) -> Select[Any]:
    return select(func.count()).select_from(query.subquery())


async def deployments_in_the_way(
    session: AsyncSession, principal: Principal, release_id: str
) -> releases.ReleaseInUse | None:
    """Why the release may not be deleted: the deployments that have not ended with it."""
    needing = select(Deployment).where(
        Deployment.release_id == release_id, Deployment.status.not_in(ENDED_STATUSES)
    )
    total = await session.scalar(_count(needing)) or 0
    if total == 0:
        return None
    scope = await visibility.reader_scope(session, principal)
    seen = needing if scope is None else needing.where(visibility.reaches(scope, session))
    seen_total = total if scope is None else await session.scalar(_count(seen)) or 0
    named = (
        await session.scalars(seen.order_by(Deployment.created_at, Deployment.id).limit(NAMED_UP_TO))
    ).all()
    return releases.ReleaseInUse(
        _reason([f'"{row.name}" ({row.status})' for row in named], seen_total, unseen=total > seen_total),
        {"deployments": [{"id": row.id, "name": row.name, "status": row.status} for row in named]},
    )


def _reason(named: list[str], seen_total: int, *, unseen: bool) -> str:
    if not named:
        return (
            "deployments you do not see have not ended: someone who sees them must abort them or let "
            "them finish first"
        )
    listing = ", ".join(named)
    if seen_total > len(named):
        listing += f" and {seen_total - len(named)} more"
    if unseen:
        listing += " and others you do not see"
    if seen_total == 1 and not unseen:
        return f"the deployment {listing} has not ended: abort it or let it finish first"
    return f"the deployments {listing} have not ended: abort them or let them finish first"


def register() -> None:
    """Done by the composition root (server/wiring.py)."""
    releases.register_in_use_check(deployments_in_the_way)
