"""TOTP second factor (RFC 6238 through pyotp) and single-use recovery codes; an administrator's
reset for someone who lost their authenticator."""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pyotp
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access import reauth
from fleetkeeper.access.models import RecoveryCode, User
from fleetkeeper.access.principal import Principal
from fleetkeeper.access.service import (
    end_sessions,
    ensure_outranks,
    get_user,
    normalize_username,
    roles_requiring_2fa,
    user_role_names,
)
from fleetkeeper.access.tokens import hash_secret
from fleetkeeper.audit.service import SYSTEM, Actor, record
from fleetkeeper.core.db import Database, utcnow
from fleetkeeper.core.errors import ConflictError, NotFoundError, ProblemError
from fleetkeeper.core.ids import new_id
from fleetkeeper.core.lookups import one_or_404
from fleetkeeper.core.ratelimit import RateLimiter

ISSUER_NAME = "fleetkeeper"
RECOVERY_CODE_COUNT = 10
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
# One step either side of now, for clocks that drift a little.
VALID_WINDOW = 1


@dataclass(frozen=True)
class Enrollment:
    secret: str
    otpauth_uri: str


def _invalid_code() -> ProblemError:
    return ProblemError("the code is wrong or was already used", code="invalid_second_factor", status=403)


def _matching_step(secret: str, code: str, now: float | None = None) -> int | None:
    """The time step whose code this is, within the window, or None."""
    totp = pyotp.TOTP(secret)
    current = totp.timecode(datetime.fromtimestamp(now if now is not None else time.time(), UTC))
    code = code.strip().replace(" ", "")
    for step in range(current - VALID_WINDOW, current + VALID_WINDOW + 1):
        # As bytes: compare_digest refuses a str with characters outside ASCII (a TypeError).
        if hmac.compare_digest(totp.generate_otp(step).encode(), code.encode()):
            return step
    return None


def _normalize_recovery_code(code: str) -> str:
    return code.strip().lower().replace("-", "").replace(" ", "")


def _new_recovery_code() -> str:
    raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(16))
    return "-".join(raw[i : i + 4] for i in range(0, 16, 4))


async def start_enrollment(database: Database, principal: Principal) -> Enrollment:
    """A new secret, pending until `confirm_enrollment`; until then it changes nothing."""
    principal.ensure_session()
    secret = pyotp.random_base32()
    async with database.transaction() as session:
        user = await get_user(session, principal.user_id)
        if user.totp_enabled_at is not None:
            raise ConflictError(
                "two-factor sign-in is already on; turn it off first", code="totp_already_enabled"
            )
        user.totp_pending_secret = secret
        uri = pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name=ISSUER_NAME)
    return Enrollment(secret, uri)


async def confirm_enrollment(
    database: Database, limiter: RateLimiter, principal: Principal, code: str, password: str | None = None
) -> list[str]:
    """Turns TOTP on once a code from the authenticator matches; returns fresh recovery codes.
    Needs the password unless the session began moments ago (`reauth`)."""
    principal.ensure_session()
    async with database.session() as session:
        user = await get_user(session, principal.user_id)
        if user.totp_pending_secret is None:
            raise ConflictError("start the enrollment first", code="totp_not_started")
        if password is None:
            await reauth.ensure_present(session, principal, user, None)
    attempt = await reauth.reserve(limiter, principal.user_id)
    if password is not None:
        await reauth.check_password(user, password)
    async with database.transaction() as session:
        user = await get_user(session, principal.user_id)
        if user.totp_pending_secret is None:
            await attempt.withdraw()
            raise ConflictError("start the enrollment first", code="totp_not_started")
        step = _matching_step(user.totp_pending_secret, code)
        if step is None:
            raise _invalid_code()
        user.totp_secret = user.totp_pending_secret
        user.totp_pending_secret = None
        user.totp_enabled_at = utcnow()
        user.totp_last_step = step
        codes = await _replace_recovery_codes(session, user.id)
        await record(
            session,
            actor=principal.actor,
            action="user.two_factor_enabled",
            object_type="user",
            object_id=user.id,
        )
    await attempt.succeeded()
    return codes


async def regenerate_recovery_codes(
    database: Database, limiter: RateLimiter, principal: Principal, code: str
) -> list[str]:
    """Replaces every recovery code; needs a current TOTP code."""
    principal.ensure_session()
    attempt = await reauth.reserve(limiter, principal.user_id)
    async with database.transaction() as session:
        user = await get_user(session, principal.user_id)
        if user.totp_secret is None or not _consume_totp(user, code):
            raise _invalid_code()
        codes = await _replace_recovery_codes(session, user.id)
        await record(
            session,
            actor=principal.actor,
            action="user.recovery_codes_regenerated",
            object_type="user",
            object_id=user.id,
        )
    await attempt.succeeded()
    return codes


async def disable(
    database: Database, limiter: RateLimiter, principal: Principal, password: str, code: str
) -> None:
    """Needs the password and a current code (or a recovery code); refused where policy requires 2FA."""
    principal.ensure_session()
    async with database.session() as session:
        user = await get_user(session, principal.user_id)
        required = await roles_requiring_2fa(session) & set(await user_role_names(session, user.id))
    if user.totp_enabled_at is None:
        raise ConflictError("two-factor sign-in is not on", code="totp_not_enabled")
    if required:
        raise ConflictError(
            f"your role(s) {', '.join(sorted(required))} require two-factor sign-in",
            code="second_factor_required_by_policy",
        )
    attempt = await reauth.reserve(limiter, user.id)
    await reauth.check_password(user, password)
    if not await accept_second_factor(database, user.id, code, code):
        raise _invalid_code()
    await attempt.succeeded()
    async with database.transaction() as session:
        user = await get_user(session, principal.user_id)
        await _turn_off(session, user)
        await record(
            session,
            actor=principal.actor,
            action="user.two_factor_disabled",
            object_type="user",
            object_id=user.id,
        )


async def reset(database: Database, actor: Principal, user_id: str) -> None:
    """For someone who lost their authenticator and recovery codes: an administrator turns their
    two-factor sign-in off and ends their sessions, so that the next sign-in takes the password
    alone (and asks to enrol again where policy requires 2FA). Their API tokens stay. Nobody
    resets their own: that is `disable`, which asks for the password and a code."""
    if user_id == actor.user_id:
        raise ConflictError(
            "you cannot reset your own second factor: turn it off under your account, or ask "
            "another administrator",
            code="cannot_modify_self",
        )
    async with database.transaction() as session:
        user = await get_user(session, user_id)
        await ensure_outranks(session, actor, user_id)
        await _reset(session, user, actor.actor, {"username": user.username})


async def recover(database: Database, username: str) -> str:
    """`reset` for someone at the server's console (`fleetkeeper users reset-2fa`), recorded as
    done by the server itself: whoever can run it can read the database anyway. Returns the
    account's username as stored."""
    async with database.transaction() as session:
        not_found = NotFoundError(f"no account named {username}", code="user_not_found")
        named = select(User).where(User.username == normalize_username(username))
        user = await one_or_404(session, named, not_found)
        await _reset(session, user, SYSTEM, {"via": "command line", "username": user.username})
    return user.username


async def _reset(session: AsyncSession, user: User, actor: Actor, details: dict[str, str]) -> None:
    if user.totp_enabled_at is None:
        raise ConflictError(f"{user.username} has no two-factor sign-in to reset", code="totp_not_enabled")
    await _turn_off(session, user)
    await end_sessions(session, user.id)
    await record(
        session,
        actor=actor,
        action="user.two_factor_reset",
        object_type="user",
        object_id=user.id,
        details=details,
    )


async def _turn_off(session: AsyncSession, user: User) -> None:
    user.totp_secret = None
    user.totp_pending_secret = None
    user.totp_enabled_at = None
    user.totp_last_step = None
    await session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))


def _unused_step(user: User, code: str | None) -> int | None:
    """The time step of a code not yet accepted: later than the last one accepted."""
    if not user.totp_secret or not code:
        return None
    step = _matching_step(user.totp_secret, code)
    if step is None or (user.totp_last_step is not None and step <= user.totp_last_step):
        return None
    return step


def _consume_totp(user: User, code: str) -> bool:
    """Accepts a code once."""
    step = _unused_step(user, code)
    if step is None:
        return False
    user.totp_last_step = step
    return True


async def second_factor_valid(
    database: Database, user_id: str, totp_code: str | None, recovery_code: str | None
) -> bool:
    """Whether `accept_second_factor` would accept these now, using nothing up."""
    async with database.session() as session:
        user = await session.get(User, user_id)
        if user is None:
            return False
        if _unused_step(user, totp_code) is not None:
            return True
        if not recovery_code:
            return False
        unused = await session.scalar(
            select(RecoveryCode.id).where(
                RecoveryCode.user_id == user_id,
                RecoveryCode.code_hash == hash_secret(_normalize_recovery_code(recovery_code)),
                RecoveryCode.used_at.is_(None),
            )
        )
        return unused is not None


async def accept_second_factor(
    database: Database, user_id: str, totp_code: str | None, recovery_code: str | None
) -> bool:
    """Checks a TOTP code or uses up a recovery code, in one transaction so that neither is
    accepted twice when two requests race."""
    async with database.transaction() as session:
        user = await session.get(User, user_id, with_for_update=True)
        if user is None:
            return False
        if totp_code and _consume_totp(user, totp_code):
            return True
        if not recovery_code:
            return False
        code_hash = hash_secret(_normalize_recovery_code(recovery_code))
        used = await session.execute(
            update(RecoveryCode)
            .where(
                RecoveryCode.user_id == user_id,
                RecoveryCode.code_hash == code_hash,
                RecoveryCode.used_at.is_(None),
            )
            .values(used_at=utcnow())
        )
        if used.rowcount != 1:  # type: ignore[attr-defined]
            return False
        await record(
            session,
            actor=_user_actor(user),
            action="user.recovery_code_used",
            object_type="user",
            object_id=user_id,
            details={"remaining": await _remaining_codes(session, user_id)},
        )
        return True


def _user_actor(user: User) -> Actor:
    return Actor(kind="user", id=user.id, name=user.username)


async def _remaining_codes(session: AsyncSession, user_id: str) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(RecoveryCode)
        .where(RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None))
    )
    return int(count or 0)


async def _replace_recovery_codes(session: AsyncSession, user_id: str) -> list[str]:
    await session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
    codes = [_new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
    for code in codes:
        session.add(
            RecoveryCode(
                id=new_id("rec"), user_id=user_id, code_hash=hash_secret(_normalize_recovery_code(code))
            )
        )
    return codes
