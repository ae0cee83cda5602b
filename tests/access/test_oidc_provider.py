"""The OpenID Provider harness itself: discovery, code flow with PKCE, a verifiable id_token, refusals."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from tests.access.conftest import OidcProviderFactory
from tests.access.oidc import (
    ALICE,
    BOB,
    LoginRejectedError,
    OidcAccount,
    OidcFlowError,
    OidcProvider,
    complete_login,
)

SCOPE = "openid profile email groups"


@dataclass
class Authorization:
    url: str
    state: str
    nonce: str
    code_verifier: str | None


async def discover(provider: OidcProvider) -> dict[str, Any]:
    async with httpx2.AsyncClient() as client:
        response = await client.get(provider.discovery_url)
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


async def authorization(
    provider: OidcProvider, *, pkce: bool = True, redirect_uri: str | None = None
) -> Authorization:
    metadata = await discover(provider)
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    verifier = generate_token(64) if pkce else None
    params = {
        "response_type": "code",
        "client_id": provider.client_id,
        "redirect_uri": redirect_uri or provider.redirect_uri,
        "scope": SCOPE,
        "state": state,
        "nonce": nonce,
    }
    if verifier:
        params |= {"code_challenge": create_s256_code_challenge(verifier), "code_challenge_method": "S256"}
    return Authorization(f"{metadata['authorization_endpoint']}?{urlencode(params)}", state, nonce, verifier)


def callback_params(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


async def exchange(provider: OidcProvider, code: str, code_verifier: str | None) -> httpx2.Response:
    metadata = await discover(provider)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": provider.redirect_uri}
    if code_verifier:
        form["code_verifier"] = code_verifier
    async with httpx2.AsyncClient() as client:
        if provider.token_endpoint_auth_method == "client_secret_post":
            credentials = {"client_id": provider.client_id, "client_secret": provider.client_secret}
            return await client.post(metadata["token_endpoint"], data=form | credentials)
        auth = (provider.client_id, provider.client_secret)
        return await client.post(metadata["token_endpoint"], data=form, auth=auth)


async def verified_id_token(provider: OidcProvider, id_token: str, nonce: str) -> dict[str, Any]:
    metadata = await discover(provider)
    async with httpx2.AsyncClient() as client:
        jwks = (await client.get(metadata["jwks_uri"])).json()
    token = jwt.decode(id_token, KeySet.import_key_set(jwks), algorithms=["RS256"])
    JWTClaimsRegistry(
        iss={"essential": True, "value": provider.issuer},
        aud={"essential": True, "value": provider.client_id},
        nonce={"essential": True, "value": nonce},
        exp={"essential": True},
        iat={"essential": True},
    ).validate(token.claims)
    return token.claims


async def sign_in(provider: OidcProvider, account: OidcAccount) -> dict[str, Any]:
    """The whole code flow with PKCE, as the server's sign-in will do it; returns the id_token's claims."""
    flow = await authorization(provider)
    redirect = await complete_login(flow.url, account.username, account.password)
    assert redirect.startswith(provider.redirect_uri + "?")
    params = callback_params(redirect)
    assert params["state"] == flow.state
    assert params["iss"] == provider.issuer  # RFC 9207, which a client can check against mix-up attacks
    response = await exchange(provider, params["code"], flow.code_verifier)
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert tokens["token_type"].lower() == "bearer"
    return await verified_id_token(provider, tokens["id_token"], flow.nonce)


async def test_discovery_names_the_issuer_and_its_keys(oidc_provider: OidcProvider) -> None:
    metadata = await discover(oidc_provider)
    assert oidc_provider.issuer.startswith("http://127.0.0.1:")
    assert metadata["issuer"] == oidc_provider.issuer
    assert metadata["jwks_uri"] == f"{oidc_provider.issuer}/jwks"
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["response_types_supported"] == ["code"]
    assert {"openid", "profile", "email", "groups"} <= set(metadata["scopes_supported"])
    assert {"groups", "email", "preferred_username"} <= set(metadata["claims_supported"])


@pytest.mark.parametrize("account", [ALICE, BOB], ids=lambda account: account.username)
async def test_code_flow_with_pkce_gives_a_verifiable_id_token_with_groups(
    oidc_provider: OidcProvider, account: OidcAccount
) -> None:
    claims = await sign_in(oidc_provider, account)
    assert claims["sub"] == account.sub
    assert claims["groups"] == account.groups
    assert claims["email"] == account.email
    assert claims["preferred_username"] == account.username


async def test_authorization_without_pkce_is_refused(oidc_provider: OidcProvider) -> None:
    flow = await authorization(oidc_provider, pkce=False)
    redirect = await complete_login(flow.url, ALICE.username, ALICE.password)
    params = callback_params(redirect)
    assert "code" not in params
    assert params["error"] == "invalid_request"
    assert "PKCE" in params["error_description"]


async def test_code_is_not_exchanged_without_its_verifier(oidc_provider: OidcProvider) -> None:
    flow = await authorization(oidc_provider)
    code = callback_params(await complete_login(flow.url, ALICE.username, ALICE.password))["code"]
    response = await exchange(oidc_provider, code, generate_token(64))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    ("username", "password"), [("alice", "not-alices-password"), ("mallory", "alice-password")]
)
async def test_wrong_credentials_get_no_code(
    oidc_provider: OidcProvider, username: str, password: str
) -> None:
    flow = await authorization(oidc_provider)
    with pytest.raises(LoginRejectedError, match="Invalid username or password"):
        await complete_login(flow.url, username, password)


async def test_unregistered_redirect_uri_is_refused(oidc_provider: OidcProvider) -> None:
    flow = await authorization(oidc_provider, redirect_uri="http://127.0.0.1:9/elsewhere")
    with pytest.raises(OidcFlowError, match="redirect_uri"):
        await complete_login(flow.url, ALICE.username, ALICE.password)


async def test_factory_starts_a_provider_for_a_late_known_callback(
    oidc_provider_factory: OidcProviderFactory,
) -> None:
    carol = OidcAccount("carol", "carol-password", "carol@example.test", [])
    provider = oidc_provider_factory(
        "http://127.0.0.1:8/late/callback", [carol], token_endpoint_auth_method="client_secret_post"
    )
    claims = await sign_in(provider, carol)
    assert claims["sub"] == "carol"
    assert claims["groups"] == []
    # oidc-provider takes client_secret_basic and client_secret_post as one method, so what is
    # checked here is the secret, not where it was sent.
    flow = await authorization(provider)
    code = callback_params(await complete_login(flow.url, "carol", "carol-password"))["code"]
    async with httpx2.AsyncClient() as client:
        response = await client.post(
            f"{provider.issuer}/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": provider.redirect_uri,
                "code_verifier": flow.code_verifier,
                "client_id": provider.client_id,
                "client_secret": "not-the-secret",
            },
        )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
