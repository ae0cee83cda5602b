"""Fixtures for sign-in tests: a real OpenID Provider (oidc-provider on node) with known accounts."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest

from tests.access.oidc import DEFAULT_ACCOUNTS, OidcAccount, OidcProvider

# A callback nothing listens on: the harness never requests the redirect_uri, it only returns it.
DEFAULT_REDIRECT_URI = "http://127.0.0.1:9/auth/oidc/callback"

OidcProviderFactory = Callable[..., OidcProvider]


@pytest.fixture(scope="session")
def oidc_provider_factory() -> Iterator[OidcProviderFactory]:
    """Starts providers for a redirect_uri known only once the server under test is up; all stop at the end.

    Call as `oidc_provider_factory(redirect_uri, accounts=DEFAULT_ACCOUNTS, **OidcProvider options)`.
    """
    started: list[OidcProvider] = []

    def start(
        redirect_uri: str, accounts: Sequence[OidcAccount] = DEFAULT_ACCOUNTS, **options: str
    ) -> OidcProvider:
        provider = OidcProvider(redirect_uri, tuple(accounts), **options).start()
        started.append(provider)
        return provider

    yield start
    for provider in started:
        provider.stop()


@pytest.fixture(scope="session")
def oidc_provider(oidc_provider_factory: OidcProviderFactory) -> OidcProvider:
    """A provider with alice (fleet-admins) and bob (fleet-readers), redirecting to DEFAULT_REDIRECT_URI."""
    return oidc_provider_factory(DEFAULT_REDIRECT_URI)
