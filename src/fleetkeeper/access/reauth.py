"""Asking again who is at the keyboard before the most sensitive changes to an account.

A signed-in session is not proof enough to turn two-factor sign-in on, nor to create an API token:
whoever holds a stolen session could otherwise bind the account to their own authenticator and
keep its owner out, or mint a token that outlives the session and a password change. The rule:
the request carries the account's current password, or the session itself began less than
`RECENT_SIGN_IN` ago (a sign-in with the password and any second factor, or through SSO — which is
how an account whose role requires 2FA enrols right after signing in, and how an SSO account,
which has no password here, does either at all). The other sensitive changes ask for more already:
a new password the current one, new recovery codes a current code, turning 2FA off both.

Every such password or code meets the same growing wait as sign-in (`backoff`), counted per
account: the caller is already known, and a stolen session must not try passwords at its ease.
Each check is counted before it is made (`reserve`), so that requests sent at once do not slip
past the wait together.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access import backoff
from fleetkeeper.access.models import SignInSession, User
from fleetkeeper.access.passwords import verify_password
from fleetkeeper.access.principal import Principal
from fleetkeeper.core.db import utcnow
from fleetkeeper.core.errors import ForbiddenError, ProblemError
from fleetkeeper.core.ratelimit import RateLimiter

RECENT_SIGN_IN = timedelta(minutes=10)


def _answers(user_id: str) -> backoff.Counter:
    return backoff.Counter(f"account-check/{user_id}", forgotten_on_success=True)


async def reserve(limiter: RateLimiter, user_id: str) -> backoff.Attempt:
    """Counts a check of the account's password or codes as a wrong answer before it is made;
    raises 429 while the account waits out wrong answers. Call `succeeded()` on the attempt once
    every answer was right (which forgets the earlier wrong ones), `withdraw()` if nothing was
    checked after all."""
    return await backoff.reserve(
        limiter, [_answers(user_id)], "too many wrong passwords or codes: wait before trying again"
    )


async def check_password(user: User, password: str) -> None:
    """Raises 403 invalid_credentials unless `password` is the account's (counted by the caller's
    `reserve`)."""
    if not await verify_password(user.password_hash, password):
        raise ProblemError("the current password is wrong", code="invalid_credentials", status=403)


async def signed_in_recently(session: AsyncSession, principal: Principal) -> bool:
    """Whether the caller's session began less than `RECENT_SIGN_IN` ago (refreshes do not count)."""
    if principal.session_id is None:
        return False
    sign_in = await session.get(SignInSession, principal.session_id)
    return sign_in is not None and utcnow() - sign_in.created_at < RECENT_SIGN_IN


async def ensure_present(
    session: AsyncSession, principal: Principal, user: User, password: str | None
) -> None:
    """Raises 403 unless `password` is the account's or the session began moments ago. A password
    given is checked even then: a wrong one is never ignored. `reserve` first when one is given."""
    if password is not None:
        await check_password(user, password)
        return
    if await signed_in_recently(session, principal):
        return
    again = f"sign in again and do this within {int(RECENT_SIGN_IN.total_seconds() // 60)} minutes"
    how = f'send your current password as "password", or {again}' if user.auth_source == "local" else again
    raise ForbiddenError(f"confirm it is you: {how}", code="reauthentication_required")
