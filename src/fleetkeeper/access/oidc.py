"""Sign-in through an OpenID provider: authorization code with PKCE, discovery, id_token checks,
and the provider's groups mapped to roles. Users are created at their first sign-in."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx2
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.access import administrators
from fleetkeeper.access.models import OidcLogin, Role, RoleAssignment, User
from fleetkeeper.access.permissions import GrantSet
from fleetkeeper.access.service import USERNAME_PATTERN, normalize_username
from fleetkeeper.access.signin import Client, SignIn, TokenPair
from fleetkeeper.access.tokens import unverified_kid
from fleetkeeper.audit.service import Actor, record
from fleetkeeper.core.config import Settings
from fleetkeeper.core.db import Database, utcnow
from fleetkeeper.core.errors import ProblemError, UnauthenticatedError
from fleetkeeper.core.ids import new_id
from fleetkeeper.core.logging import get_logger

CALLBACK_PATH = "/api/v1/auth/oidc/callback"
LOGIN_LIFETIME = timedelta(minutes=10)
METADATA_TTL_SECONDS = 3600.0
ACCEPTED_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
CLOCK_LEEWAY_SECONDS = 60

log = get_logger(__name__)


class OidcError(UnauthenticatedError):
    code = "oidc_sign_in_failed"


def _not_configured() -> ProblemError:
    return ProblemError(
        "single sign-on is not configured on this server", code="oidc_not_configured", status=404
    )


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    algorithms: tuple[str, ...]


def _require_secure(url: str, what: str) -> None:
    parts = urlsplit(url)
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise OidcError(f"the provider's {what} must use https")


class OidcClient:
    """One per process: caches the provider's metadata and keys."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.settings.oidc_issuer)

    @property
    def redirect_url(self) -> str:
        return self.settings.oidc_redirect_url or self.settings.management_url + CALLBACK_PATH

    async def _get_json(self, url: str) -> dict[str, Any]:
        _require_secure(url, "endpoints")
        try:
            async with httpx2.AsyncClient(timeout=10, follow_redirects=False) as http:
                response = await http.get(url)
        except httpx2.HTTPError as exc:
            raise OidcError(f"the identity provider does not answer: {exc}") from None
        if response.status_code != 200:
            raise OidcError(f"the identity provider answered {response.status_code} for {url}")
        body = response.json()
        if not isinstance(body, dict):
            raise OidcError("the identity provider sent an unexpected document")
        return body

    async def metadata(self) -> ProviderMetadata:
        if self._metadata and time.monotonic() - self._metadata_at < METADATA_TTL_SECONDS:
            return self._metadata
        issuer = self.settings.oidc_issuer
        if not issuer:
            raise _not_configured()
        document = await self._get_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
        if document.get("issuer") != issuer:
            raise OidcError("the provider's discovery document names another issuer")
        algorithms = tuple(
            alg
            for alg in document.get("id_token_signing_alg_values_supported", ["RS256"])
            if alg in ACCEPTED_ALGORITHMS
        )
        self._metadata = ProviderMetadata(
            issuer=issuer,
            authorization_endpoint=str(document["authorization_endpoint"]),
            token_endpoint=str(document["token_endpoint"]),
            jwks_uri=str(document["jwks_uri"]),
            algorithms=algorithms,
        )
        for url in (
            self._metadata.authorization_endpoint,
            self._metadata.token_endpoint,
            self._metadata.jwks_uri,
        ):
            _require_secure(url, "endpoints")
        self._metadata_at = time.monotonic()
        self._keys = None
        return self._metadata

    async def _key_set(self, kid: str | None, metadata: ProviderMetadata) -> KeySet:
        if self._keys is None or (kid and kid not in {key.kid for key in self._keys.keys}):
            self._keys = KeySet.import_key_set(await self._get_json(metadata.jwks_uri))  # type: ignore[arg-type]
        return self._keys

    async def authorization_url(self, database: Database) -> tuple[str, str]:
        """Where to send the browser, and the state that its callback must bring back."""
        metadata = await self.metadata()
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        async with database.transaction() as session:
            await session.execute(delete(OidcLogin).where(OidcLogin.created_at < utcnow() - LOGIN_LIFETIME))
            session.add(OidcLogin(state=state, nonce=nonce, code_verifier=verifier))
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.settings.oidc_client_id,
                "redirect_uri": self.redirect_url,
                "scope": self.settings.oidc_scopes,
                "state": state,
                "nonce": nonce,
                "code_challenge": create_s256_code_challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        return f"{metadata.authorization_endpoint}?{query}", state

    async def _take_login(self, database: Database, state: str) -> OidcLogin:
        """Single use: the row is deleted in the same transaction that reads it."""
        async with database.transaction() as session:
            login = await session.get(OidcLogin, state, with_for_update=True)
            if login is not None:
                await session.delete(login)
        if login is None or login.created_at < utcnow() - LOGIN_LIFETIME:
            raise OidcError(
                "this sign-in was not started here, was already used, or took too long: start again"
            )
        return login

    async def _exchange(self, metadata: ProviderMetadata, code: str, verifier: str) -> str:
        client_id, secret = self.settings.oidc_client_id, self.settings.oidc_client_secret
        if not client_id or not secret:
            raise _not_configured()
        try:
            async with httpx2.AsyncClient(timeout=10, follow_redirects=False) as http:
                response = await http.post(
                    metadata.token_endpoint,
                    data={
                        "grant_type": "authorization_code",
                        "code": code,
                        "redirect_uri": self.redirect_url,
                        "code_verifier": verifier,
                    },
                    auth=(client_id, secret.get_secret_value()),
                )
        except httpx2.HTTPError as exc:
            raise OidcError(f"the identity provider does not answer: {exc}") from None
        body = (
            response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        )
        if response.status_code != 200 or not isinstance(body.get("id_token"), str):
            raise OidcError(
                f"the identity provider refused the code: {body.get('error', response.status_code)}"
            )
        id_token: str = body["id_token"]
        return id_token

    async def verified_claims(self, database: Database, code: str, state: str) -> dict[str, Any]:
        client_id = self.settings.oidc_client_id
        if not client_id:
            raise _not_configured()
        login = await self._take_login(database, state)
        metadata = await self.metadata()
        id_token = await self._exchange(metadata, code, login.code_verifier)
        try:
            header_kid = unverified_kid(id_token)
            token = jwt.decode(
                id_token, await self._key_set(header_kid, metadata), algorithms=list(metadata.algorithms)
            )
            jwt.JWTClaimsRegistry(
                leeway=CLOCK_LEEWAY_SECONDS,
                iss={"essential": True, "value": metadata.issuer},
                aud={"essential": True, "value": client_id},
                sub={"essential": True},
                exp={"essential": True},
                iat={"essential": True},
                nonce={"essential": True, "value": login.nonce},
            ).validate(token.claims)
        except (JoseError, ValueError, KeyError) as exc:
            raise OidcError(f"the identity provider's id_token does not verify: {exc}") from None
        claims = token.claims
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != client_id:
            raise OidcError("the id_token was issued to another party")
        return claims

    def roles_for(self, claims: dict[str, Any]) -> list[str]:
        groups = claims.get(self.settings.oidc_groups_claim) or []
        if isinstance(groups, str):
            groups = [groups]
        roles: set[str] = set()
        for group in groups:
            roles.update(self.settings.oidc_role_mapping.get(str(group), []))
        return sorted(roles)


_UNSAFE = re.compile(r"[^a-z0-9._@-]")


async def sign_in_with_provider(
    database: Database, oidc: OidcClient, flow: SignIn, code: str, state: str, client: Client
) -> TokenPair:
    claims = await oidc.verified_claims(database, code, state)
    issuer, subject = str(claims["iss"]), str(claims["sub"])
    roles = oidc.roles_for(claims)
    user = await _find_or_create(database, issuer, subject, claims, roles, client)
    if user.is_disabled:
        raise UnauthenticatedError("this account is disabled", code="account_disabled")
    return await flow.start_session(user, "oidc", client)


async def _find_or_create(
    database: Database, issuer: str, subject: str, claims: dict[str, Any], roles: list[str], client: Client
) -> User:
    """Links by (issuer, subject), never by a name or an e-mail address an attacker could choose."""
    actor = Actor(kind="system", name="oidc", address=client.address)
    for attempt in range(2):
        try:
            async with database.transaction() as session:
                user = await session.scalar(
                    select(User).where(User.oidc_issuer == issuer, User.oidc_subject == subject)
                )
                created = user is None
                if user is None:
                    username = await _free_username(session, claims, subject, suffix=attempt > 0)
                    user = User(
                        id=new_id("usr"),
                        username=username,
                        auth_source="oidc",
                        password_hash=None,
                        oidc_issuer=issuer,
                        oidc_subject=subject,
                    )
                    session.add(user)
                user.email = _text(claims.get("email"), 320)
                user.display_name = _text(claims.get("name"), 200)
                await session.flush()
                changed = await _sync_roles(session, user, roles, actor)
                if created:
                    await record(
                        session,
                        actor=actor,
                        action="user.created",
                        object_type="user",
                        object_id=user.id,
                        details={
                            "username": user.username,
                            "source": "oidc",
                            "issuer": issuer,
                            "roles": roles,
                        },
                    )
                elif changed:
                    await record(
                        session,
                        actor=actor,
                        action="user.roles_changed",
                        object_type="user",
                        object_id=user.id,
                        details={"roles": roles, "source": "oidc"},
                    )
                return user
        except IntegrityError:
            continue
    raise OidcError("could not create an account for this identity; try again")


async def _free_username(session: AsyncSession, claims: dict[str, Any], subject: str, *, suffix: bool) -> str:
    wanted = normalize_username(str(claims.get("preferred_username") or claims.get("email") or subject))
    wanted = _UNSAFE.sub("-", wanted)[:48].strip("-._@") or "user"
    if not USERNAME_PATTERN.match(wanted):
        wanted = "user"
    taken = await session.scalar(select(User.id).where(User.username == wanted))
    if taken or suffix:
        wanted = f"{wanted}-{secrets.token_hex(3)}"
    return wanted


async def _sync_roles(session: AsyncSession, user: User, roles: list[str], actor: Actor) -> bool:
    """The provider is the source of truth for an SSO user's roles: they follow it at every
    sign-in — except that the last administrator keeps their roles (`administrators`): refusing
    the sign-in would lock them out, and following it would leave nobody to give every permission.
    That is logged and recorded (user.roles_kept); the roles follow the provider again once
    another administrator exists."""
    found = (await session.scalars(select(Role).where(Role.name.in_(roles)))).all()
    wanted = {role.id: role for role in found}
    current = set(
        (await session.scalars(select(RoleAssignment.role_id).where(RoleAssignment.user_id == user.id))).all()
    )
    if current == set(wanted):
        return False
    admins = await administrators.lock(session)
    grants = GrantSet.empty()
    for role in found:
        grants = grants.union(GrantSet.from_json(role.grants))
    if not user.is_disabled and not admins.remain_if(user.id, grants):
        kept = sorted(await session.scalars(select(Role.name).where(Role.id.in_(current))))
        log.warning(
            "the identity provider's roles were not applied: this account is the last administrator",
            code="last_administrator",
            user_id=user.id,
            roles=kept,
            roles_from_provider=sorted(roles),
        )
        await record(
            session,
            actor=actor,
            action="user.roles_kept",
            object_type="user",
            object_id=user.id,
            outcome="denied",
            details={
                "reason": "last_administrator",
                "roles": kept,
                "roles_from_provider": sorted(role.name for role in found),
                "source": "oidc",
            },
        )
        return False
    await session.execute(delete(RoleAssignment).where(RoleAssignment.user_id == user.id))
    for role_id in wanted:
        session.add(RoleAssignment(user_id=user.id, role_id=role_id))
    return True


def _text(value: object, limit: int) -> str | None:
    return str(value)[:limit] if isinstance(value, str) and value else None
