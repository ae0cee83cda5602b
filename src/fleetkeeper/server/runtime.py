"""What one server process shares between its listeners: the infrastructure (settings, database,
PKI, rate limiter, object store) and the domains' services (token key ring, OpenID client, online
TUF keys, terminal relay), built at start-up. Each domain sees it through its own context protocol
(server/contexts.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fleetkeeper.core.config import Settings
from fleetkeeper.core.db import Database
from fleetkeeper.core.logging import get_logger
from fleetkeeper.core.migrations import migration_state, upgrade_async
from fleetkeeper.core.pki import (
    CertificateAuthority,
    PkiPaths,
    ensure_device_listener_certificate,
    load_ca,
    load_or_create_ca,
)
from fleetkeeper.core.tls import DeviceListenerTls

if TYPE_CHECKING:
    from fleetkeeper.access.oidc import OidcClient
    from fleetkeeper.access.tokens import KeyRing
    from fleetkeeper.core.objectstore import ObjectStore
    from fleetkeeper.core.ratelimit import RateLimiter
    from fleetkeeper.releases.online_keys import OnlineKeys
    from fleetkeeper.terminal.relay import Relay

log = get_logger(__name__)


class StartupError(Exception):
    """The server cannot start; the message says why and what fixes it."""


@dataclass
class Runtime:
    settings: Settings
    database: Database
    pki: PkiPaths
    ca: CertificateAuthority
    device_tls: DeviceListenerTls
    keyring: KeyRing
    rate_limiter: RateLimiter
    oidc: OidcClient
    online_keys: OnlineKeys
    object_store: ObjectStore
    terminal_relay: Relay
    created_ca: bool = False
    first_admin_password: str | None = None
    # False in a device worker (server/device_workers.py): another process of the same server did
    # the first-start work and publishes the CRL file.
    primary: bool = True

    @classmethod
    async def start(cls, settings: Settings, *, primary: bool = True) -> Runtime:
        """The main process's runtime: migrates an empty embedded database, creates the CA, keys and
        first administrator on first start, brings the built-in roles up to date and publishes the
        CRL. `primary=False` (a device worker) only loads what the main process left in place."""
        from fleetkeeper.access.oidc import OidcClient
        from fleetkeeper.access.service import ensure_first_admin, sync_builtin_roles
        from fleetkeeper.access.tokens import KeyRing
        from fleetkeeper.core.objectstore import object_store_from_settings
        from fleetkeeper.core.ratelimit import RateLimiter
        from fleetkeeper.devices.certificates import build_crl, publish_crl
        from fleetkeeper.releases.online_keys import load_or_create_online_keys
        from fleetkeeper.terminal.relay import relay_for

        database = Database(settings.resolved_database_url)
        pki = PkiPaths(settings.data_dir / "pki")
        created_ca, password = False, None
        try:
            if primary:
                settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                await _require_schema_at_head(database, settings)
                ca, created_ca = load_or_create_ca(pki)
                ensure_device_listener_certificate(pki, ca, settings.device_server_names)
                number, crl = await publish_crl(database, ca, pki)
                online_keys = load_or_create_online_keys(pki.directory / "tuf")
            else:
                ca = _load_ca(pki)
                number, crl = await build_crl(database, ca)
                online_keys = load_or_create_online_keys(pki.directory / "tuf", create=False)
            device_tls = DeviceListenerTls(
                pki.device_listener_cert, pki.device_listener_key, pki.ca_cert, crl, crl_number=number
            )
            object_store = object_store_from_settings(settings)
            if primary:
                await sync_builtin_roles(database)
                password = await ensure_first_admin(database)
        except BaseException:
            await database.dispose()
            raise
        return cls(
            settings,
            database,
            pki,
            ca=ca,
            device_tls=device_tls,
            keyring=KeyRing(database),
            rate_limiter=RateLimiter(settings.rate_limit_storage, settings.rate_limit_key_prefix),
            oidc=OidcClient(settings),
            online_keys=online_keys,
            object_store=object_store,
            terminal_relay=relay_for(settings.resolved_database_url),
            created_ca=created_ca,
            first_admin_password=password,
            primary=primary,
        )

    async def close(self) -> None:
        await self.terminal_relay.close()
        await self.database.dispose()


async def _require_schema_at_head(database: Database, settings: Settings) -> None:
    try:
        state = await migration_state(database)
    except Exception as exc:
        raise StartupError(f"cannot reach the database ({_redacted(database.url)}): {exc}") from exc
    if state.at_head:
        return
    if state.empty and settings.is_sqlite:
        # The embedded default creates its own database on first start; an external one is the
        # operator's to migrate, on purpose, with `fleetkeeper db upgrade`.
        log.info("creating the embedded database", path=str(database.url.split("///", 1)[-1]))
        await upgrade_async(database.url)
        return
    raise StartupError(f"refusing to start: {state.describe()}")


def _load_ca(pki: PkiPaths) -> CertificateAuthority:
    try:
        return load_ca(pki)
    except FileNotFoundError:
        raise StartupError(
            f"no fleet CA in {pki.directory}: the server's main process makes it on first start"
        ) from None


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
