"""Token mechanics: JWT access tokens signed by rotating keys, and opaque secrets stored hashed."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from joserfc import jwt
from joserfc.errors import ExpiredTokenError, InvalidClaimError, JoseError
from joserfc.jwk import ECKey, KeySet
from joserfc.util import urlsafe_b64decode
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access.models import SigningKey
from fleetkeeper.audit.service import SYSTEM, Actor, record
from fleetkeeper.core.db import Database, utcnow
from fleetkeeper.core.errors import UnauthenticatedError
from fleetkeeper.core.ids import new_id

ALGORITHM = "ES256"
ISSUER = "fleetkeeper"
AUDIENCE = "fleetkeeper-api"
ACCESS_TOKEN_TTL = timedelta(minutes=15)
# The web console keeps its token in an HttpOnly cookie instead of a refresh-token pair (several
# browser requests at once would race a single-use refresh token); it is renewed as it is used.
CONSOLE_AUDIENCE = "fleetkeeper-console"
CONSOLE_TOKEN_TTL = timedelta(hours=8)
CLOCK_LEEWAY_SECONDS = 30
# A retired key keeps verifying for this long, so that rotating does not sign anyone out.
RETIRED_KEY_GRACE = ACCESS_TOKEN_TTL + timedelta(seconds=CLOCK_LEEWAY_SECONDS)
# An unknown kid reloads the keys from the database (another replica may have rotated), at most this often.
KEY_RELOAD_INTERVAL = 5.0


def hash_secret(secret: str) -> str:
    """Tokens carry 256 random bits, so one SHA-256 is enough (unlike passwords)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, expected_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), expected_hash)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    session_id: str
    pending: tuple[str, ...]
    expires_at: int
    kid: str | None = None
    csrf: str | None = None  # console tokens: the session's CSRF token


class KeyRing:
    """The signing keys of this server, cached per process and shared through the database."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._signing: ECKey | None = None
        self._verifying = KeySet([])
        self._loaded_at = 0.0

    async def _load(self) -> None:
        async with self.database.session() as session:
            rows = (await session.scalars(select(SigningKey).order_by(SigningKey.created_at))).all()
        active = [row for row in rows if row.retired_at is None]
        self._signing = ECKey.import_key(json.loads(active[-1].private_jwk)) if active else None
        self._verifying = KeySet([ECKey.import_key(json.loads(row.public_jwk)) for row in rows])
        self._loaded_at = time.monotonic()

    async def signing_key(self) -> ECKey:
        if self._signing is None:
            await self._load()
        if self._signing is None:
            await rotate_signing_key(self.database)
            await self._load()
        assert self._signing is not None
        return self._signing

    async def verifying_keys(self, kid: str | None) -> KeySet:
        known = {key.kid for key in self._verifying.keys}
        if kid not in known and time.monotonic() - self._loaded_at > KEY_RELOAD_INTERVAL:
            await self._load()
        return self._verifying

    async def public_jwks(self) -> dict[str, Any]:
        await self._load()
        return dict(self._verifying.as_dict(private=False))

    def forget(self) -> None:
        self._signing = None
        self._loaded_at = 0.0

    async def issue_access_token(
        self,
        user_id: str,
        session_id: str,
        pending: list[str] | tuple[str, ...],
        *,
        audience: str = AUDIENCE,
        ttl: timedelta = ACCESS_TOKEN_TTL,
        csrf: str | None = None,
    ) -> tuple[str, int]:
        key = await self.signing_key()
        now = int(time.time())
        expires = now + int(ttl.total_seconds())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": audience,
            "sub": user_id,
            "sid": session_id,
            "iat": now,
            "nbf": now,
            "exp": expires,
            "jti": secrets.token_hex(12),
        }
        if pending:
            claims["pending"] = list(pending)
        if csrf:
            claims["csrf"] = csrf
        header = {"alg": ALGORITHM, "kid": key.kid, "typ": "at+jwt"}
        return jwt.encode(header, claims, key, algorithms=[ALGORITHM]), expires

    @property
    def current_kid(self) -> str | None:
        return self._signing.kid if self._signing else None

    async def verify_access_token(self, token: str, *, audience: str = AUDIENCE) -> AccessClaims:
        invalid = UnauthenticatedError("the access token is not valid", code="invalid_token")
        try:
            kid = unverified_kid(token)
            decoded = jwt.decode(token, await self.verifying_keys(kid), algorithms=[ALGORITHM])
            jwt.JWTClaimsRegistry(
                leeway=CLOCK_LEEWAY_SECONDS,
                iss={"essential": True, "value": ISSUER},
                aud={"essential": True, "value": audience},
                sub={"essential": True},
                sid={"essential": True},
                exp={"essential": True},
                nbf={"essential": True},
            ).validate(decoded.claims)
        except ExpiredTokenError:
            raise UnauthenticatedError("the access token has expired", code="token_expired") from None
        except InvalidClaimError as exc:
            if exc.claim == "nbf":
                raise UnauthenticatedError(
                    "the access token is not valid yet", code="token_not_yet_valid"
                ) from None
            raise invalid from None
        except JoseError:
            raise invalid from None
        except (ValueError, TypeError, KeyError):
            raise invalid from None
        claims = decoded.claims
        if decoded.header.get("typ") != "at+jwt":
            raise invalid
        pending = claims.get("pending", [])
        if not isinstance(pending, list) or not all(isinstance(item, str) for item in pending):
            raise invalid
        csrf = claims.get("csrf")
        return AccessClaims(
            str(claims["sub"]),
            str(claims["sid"]),
            tuple(pending),
            int(claims["exp"]),
            kid=kid,
            csrf=csrf if isinstance(csrf, str) else None,
        )


def unverified_kid(token: str) -> str | None:
    """The key id a JWT names, read before verifying it in order to pick the key."""
    header_segment = token.split(".", 1)[0]
    header = json.loads(urlsafe_b64decode(header_segment.encode()))
    if not isinstance(header, dict):
        raise ValueError("the token header is not an object")
    kid = header.get("kid")
    return kid if isinstance(kid, str) else None


async def rotate_signing_key(database: Database, actor: Actor = SYSTEM) -> str:
    """A new key signs from now on; the previous one is retired and later removed."""
    key = ECKey.generate_key("P-256", parameters={"kid": new_id("key")})
    now = utcnow()
    async with database.transaction() as session:
        await _retire_and_prune(session, now)
        session.add(
            SigningKey(
                kid=key.kid,
                algorithm=ALGORITHM,
                private_jwk=json.dumps(key.as_dict(private=True)),
                public_jwk=json.dumps(key.as_dict(private=False)),
                created_at=now,
            )
        )
        await record(
            session,
            actor=actor,
            action="auth.signing_key_rotated",
            object_type="signing_key",
            object_id=key.kid,
        )
    assert key.kid is not None
    return key.kid


async def _retire_and_prune(session: AsyncSession, now: Any) -> None:
    for row in (await session.scalars(select(SigningKey).where(SigningKey.retired_at.is_(None)))).all():
        row.retired_at = now
    await session.execute(delete(SigningKey).where(SigningKey.retired_at < now - RETIRED_KEY_GRACE))
