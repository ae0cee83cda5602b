"""Domain logic of the access domain."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from fleetkeeper.access.models import User
from fleetkeeper.access.passwords import generate_one_time_password, hash_password
from fleetkeeper.core.db import Database
from fleetkeeper.core.ids import new_id

FIRST_ADMIN_USERNAME = "admin"


async def ensure_first_admin(database: Database) -> str | None:
    """On a database without users, create the first administrator.

    Returns its one-time password (which must be changed at first sign-in), or None when users
    already exist. Safe when several replicas start at once: only one insert can win.
    """
    async with database.session() as session:
        if await session.scalar(select(func.count()).select_from(User)):
            return None
    password = generate_one_time_password()
    admin = User(
        id=new_id("usr"),
        username=FIRST_ADMIN_USERNAME,
        password_hash=await hash_password(password),
        must_change_password=True,
    )
    try:
        async with database.transaction() as session:
            session.add(admin)
    except IntegrityError:
        return None
    return password
