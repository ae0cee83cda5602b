"""Signing in and staying signed in: passwords and second factors, sessions, rotating refresh tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access import backoff, known_networks, twofactor
from fleetkeeper.access.models import RefreshToken, SignInSession, User
from fleetkeeper.access.passwords import hash_password, needs_rehash, verify_password
from fleetkeeper.access.principal import Principal
from fleetkeeper.access.service import ensure_outranks, get_user, normalize_username, pending_actions
from fleetkeeper.access.tokens import KeyRing, hash_secret, new_secret, secret_matches
from fleetkeeper.audit.service import Actor, record
from fleetkeeper.core.config import Settings
from fleetkeeper.core.db import Database, utcnow
from fleetkeeper.core.errors import NotFoundError, UnauthenticatedError
from fleetkeeper.core.ids import new_id
from fleetkeeper.core.lookups import one_or_404
from fleetkeeper.core.networks import network_prefix
from fleetkeeper.core.ratelimit import RateLimitedError, RateLimiter

SESSION_LIFETIME = timedelta(days=30)
REFRESH_TOKEN_TTL = timedelta(days=14)


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    access_expires_at: int
    refresh_token: str
    session_id: str
    pending: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    totp_code: str | None = None
    recovery_code: str | None = None


@dataclass(frozen=True)
class Client:
    address: str | None
    user_agent: str | None = None


def _invalid_credentials() -> UnauthenticatedError:
    return UnauthenticatedError("the username or password is wrong", code="invalid_credentials")


WAIT_DETAIL = "too many failed sign-ins: wait before trying again"


def client_network(address: str | None, settings: Settings) -> str:
    """Whom the limits at one account count as one source: the address's network (`core.networks`)."""
    return network_prefix(
        address, v4=settings.sign_in_network_prefix_v4, v6=settings.sign_in_network_prefix_v6
    )


def client_source(address: str | None, settings: Settings) -> str:
    """Whom the limits at any accounts count as one source: the IPv4 address itself, or its IPv6
    network. Counted per /24, a neighbour trying made-up accounts kept everyone of that /24 out,
    the owner of an account with the right password included."""
    return network_prefix(address, v4=32, v6=settings.sign_in_network_prefix_v6)


@dataclass(frozen=True)
class _Counters:
    """Whom failed sign-ins hold back (`backoff`). At one account a client network is one source;
    at any accounts, an address (an IPv6 network). An attacker's failures make their own network
    wait at that account, not the account's owner elsewhere, nor the others of that network; the
    address waits after many failures at any accounts (spraying), the account as a whole only after
    more than one network can fail alone (a distributed attack) — and even then not for its owner's
    own networks, nor for a sign-in that shows a valid second factor."""

    from_network: backoff.Counter
    source: backoff.Counter
    account: backoff.Counter

    @classmethod
    def of(cls, username: str, network: str, source: str, settings: Settings) -> _Counters:
        return cls(
            backoff.Counter(f"signin/account-from-network/{network}/{username}", forgotten_on_success=True),
            backoff.Counter(f"signin/source/{source}", settings.sign_in_failures_per_address),
            backoff.Counter(f"signin/account/{username}", settings.sign_in_failures_per_account),
        )


class SignIn:
    """The password sign-in flow with its limits; one per process (it holds the rate limiter)."""

    def __init__(
        self, database: Database, keyring: KeyRing, limiter: RateLimiter, settings: Settings
    ) -> None:
        self.database = database
        self.keyring = keyring
        self.limiter = limiter
        self.settings = settings

    async def sign_in(self, credentials: Credentials, client: Client) -> TokenPair:
        """Every attempt is counted as a failure before its password is checked, and taken back
        when it was right (`backoff`)."""
        username = normalize_username(credentials.username)
        network = client_network(client.address, self.settings)
        source = client_source(client.address, self.settings)
        counters = _Counters.of(username, network, source, self.settings)
        await self.limiter.hit(
            self.settings.sign_in_limit_per_address, f"signin-source/{source}", detail="too many sign-ins"
        )
        await self.limiter.hit(
            self.settings.sign_in_limit_per_account,
            f"signin-account-from-network/{network}/{username}",
            detail="too many sign-ins",
        )
        attempts = [
            await backoff.reserve(self.limiter, [counters.from_network, counters.source], WAIT_DETAIL)
        ]

        async with self.database.session() as session:
            user = await session.scalar(select(User).where(User.username == username))
            known = user is not None and await known_networks.is_known(
                session, user.id, network, self.settings.sign_in_known_network_days
            )
        usable = user is not None and not user.is_disabled and user.auth_source == "local"
        try:
            attempts.append(await backoff.reserve(self.limiter, [counters.account], WAIT_DETAIL))
        except RateLimitedError:
            # The account waits for everybody, but not for its owner's own networks, nor for a
            # valid second factor (checked first; a wrong one counts as this network's failure).
            shown = None if known else await self._second_factor_shown(user if usable else None, credentials)
            if not (known or shown):
                if shown is None:
                    await attempts[0].withdraw()
                else:
                    await self._failed(username, client, user, "wrong second factor")
                raise

        password_ok = await verify_password(
            user.password_hash if usable and user else None, credentials.password
        )
        if not (usable and password_ok) or user is None:
            await self._failed(username, client, user, "wrong username or password")
            raise _invalid_credentials()

        if user.totp_enabled_at is not None:
            if not credentials.totp_code and not credentials.recovery_code:
                for attempt in attempts:  # the password was right: no failure to count
                    await attempt.withdraw()
                raise UnauthenticatedError(
                    "this account needs a second factor: send totp_code or recovery_code",
                    code="second_factor_required",
                )
            if not await twofactor.accept_second_factor(
                self.database, user.id, credentials.totp_code, credentials.recovery_code
            ):
                await self._failed(username, client, user, "wrong second factor")
                raise UnauthenticatedError("the second factor is wrong or used", code="invalid_second_factor")

        for attempt in attempts:
            await attempt.succeeded()
        rehashed = await hash_password(credentials.password) if needs_rehash(user.password_hash) else None
        return await self.start_session(user, "password", client, rehashed=rehashed, network=network)

    async def _second_factor_shown(self, user: User | None, credentials: Credentials) -> bool | None:
        """Whether the sign-in carries a valid second factor of a two-factor account, checked
        without using it up; None when there is none to check."""
        if user is None or user.totp_enabled_at is None:
            return None
        if not credentials.totp_code and not credentials.recovery_code:
            return None
        return await twofactor.second_factor_valid(
            self.database, user.id, credentials.totp_code, credentials.recovery_code
        )

    async def _failed(self, username: str, client: Client, user: User | None, reason: str) -> None:
        """Records a failed sign-in; its attempt stays counted (`backoff`)."""
        async with self.database.transaction() as session:
            await record(
                session,
                actor=Actor(kind="anonymous", name=username, address=client.address),
                action="auth.sign_in",
                object_type="user",
                object_id=user.id if user else None,
                outcome="failure",
                details={"reason": reason, "method": "password"},
            )

    async def start_session(
        self,
        user: User,
        method: str,
        client: Client,
        *,
        rehashed: str | None = None,
        network: str | None = None,
    ) -> TokenPair:
        """`network`: the client network a password sign-in came from, remembered as known."""
        now = utcnow()
        refresh_secret = new_secret()
        async with self.database.transaction() as session:
            stored = await session.get(User, user.id, with_for_update=True)
            if stored is None or stored.is_disabled:
                raise _invalid_credentials()
            stored.last_sign_in_at = now
            if rehashed:
                stored.password_hash = rehashed
            if network is not None:
                await known_networks.remember(session, user.id, network, now)
            sign_in = SignInSession(
                id=new_id("ses"),
                user_id=user.id,
                auth_method=method,
                created_at=now,
                last_used_at=now,
                expires_at=now + SESSION_LIFETIME,
                address=client.address,
                user_agent=(client.user_agent or "")[:300] or None,
            )
            session.add(sign_in)
            await session.flush()
            token = _add_refresh_token(session, sign_in, refresh_secret, now)
            pending = await pending_actions(session, stored)
            await record(
                session,
                actor=Actor(kind="user", id=user.id, name=user.username, address=client.address),
                action="auth.sign_in",
                object_type="user",
                object_id=user.id,
                details={"method": method, "session_id": sign_in.id, "pending": pending},
            )
        access, expires = await self.keyring.issue_access_token(user.id, sign_in.id, pending)
        return TokenPair(access, expires, f"{token.id}.{refresh_secret}", sign_in.id, pending)

    async def refresh(self, refresh_token: str, client: Client) -> TokenPair:
        """One use per refresh token; a second use is theft, and ends the whole session."""
        invalid = UnauthenticatedError("the refresh token is not valid", code="invalid_refresh_token")
        token_id, _, secret = refresh_token.partition(".")
        if not token_id or not secret:
            raise invalid
        now = utcnow()
        async with self.database.transaction() as session:
            row = await session.execute(
                select(RefreshToken, SignInSession, User)
                .join(SignInSession, SignInSession.id == RefreshToken.session_id)
                .join(User, User.id == SignInSession.user_id)
                .where(RefreshToken.id == token_id)
            )
            found = row.one_or_none()
            if found is None or not secret_matches(secret, found[0].token_hash):
                raise invalid
            token, sign_in, user = found
            if sign_in.revoked_at is not None or user.is_disabled:
                raise invalid
            if token.expires_at <= now or sign_in.expires_at <= now:
                raise UnauthenticatedError("the session has expired: sign in again", code="session_expired")
            claimed = await session.execute(
                update(RefreshToken)
                .where(RefreshToken.id == token.id, RefreshToken.used_at.is_(None))
                .values(used_at=now)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                sign_in.revoked_at = now
                await record(
                    session,
                    actor=Actor(kind="user", id=user.id, name=user.username, address=client.address),
                    action="auth.refresh_token_reused",
                    object_type="session",
                    object_id=sign_in.id,
                    outcome="denied",
                    details={"session_ended": True},
                )
                reused = True
            else:
                reused = False
                new_secret_value = new_secret()
                successor = _add_refresh_token(session, sign_in, new_secret_value, now)
                sign_in.last_used_at = now
                pending = await pending_actions(session, user)
        if reused:
            raise invalid
        access, expires = await self.keyring.issue_access_token(user.id, sign_in.id, pending)
        return TokenPair(access, expires, f"{successor.id}.{new_secret_value}", sign_in.id, pending)


def _add_refresh_token(
    session: AsyncSession, sign_in: SignInSession, secret: str, now: datetime
) -> RefreshToken:
    token = RefreshToken(
        id=new_id("rft"),
        session_id=sign_in.id,
        token_hash=hash_secret(secret),
        created_at=now,
        expires_at=min(now + REFRESH_TOKEN_TTL, sign_in.expires_at),
    )
    session.add(token)
    return token


async def list_sessions(session: AsyncSession, user_id: str) -> Sequence[SignInSession]:
    now = utcnow()
    return (
        await session.scalars(
            select(SignInSession)
            .where(
                SignInSession.user_id == user_id,
                SignInSession.revoked_at.is_(None),
                SignInSession.expires_at > now,
            )
            .order_by(SignInSession.created_at.desc())
        )
    ).all()


async def end_session(database: Database, principal: Principal, session_id: str) -> None:
    async with database.transaction() as session:
        own = select(SignInSession).where(
            SignInSession.id == session_id, SignInSession.user_id == principal.user_id
        )
        sign_in = await one_or_404(session, own, NotFoundError("no such session", code="session_not_found"))
        if sign_in.revoked_at is None:
            sign_in.revoked_at = utcnow()
            await record(
                session,
                actor=principal.actor,
                action="auth.session_ended",
                object_type="session",
                object_id=session_id,
            )


async def end_all_sessions(database: Database, principal: Principal, user_id: str) -> int:
    """Ends every session of the caller's own account (`user_id` is theirs)."""
    async with database.transaction() as session:
        return await _end_all(session, principal, user_id)


async def end_sessions_of(database: Database, actor: Principal, user_id: str) -> int:
    """An administrator ends someone's sessions (DELETE /api/v1/users/{id}/sessions, the console):
    only of an account no stronger than theirs, as every action on another account; their own
    only from a signed-in session, as under /api/v1/me."""
    async with database.transaction() as session:
        await get_user(session, user_id)
        if user_id == actor.user_id:
            actor.ensure_session()
        await ensure_outranks(session, actor, user_id)
        return await _end_all(session, actor, user_id)


async def _end_all(session: AsyncSession, principal: Principal, user_id: str) -> int:
    result = await session.execute(
        update(SignInSession)
        .where(SignInSession.user_id == user_id, SignInSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    count: int = result.rowcount  # type: ignore[attr-defined]
    await record(
        session,
        actor=principal.actor,
        action="auth.all_sessions_ended",
        object_type="user",
        object_id=user_id,
        details={"sessions": count},
    )
    return count
