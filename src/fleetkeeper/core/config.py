"""Configuration: defaults < TOML file < FLEETKEEPER_* environment < command-line options."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "FLEETKEEPER_"
CONFIG_FILE_ENV = f"{ENV_PREFIX}CONFIG_FILE"


class ConfigError(Exception):
    """Configuration that cannot be used; the message names the setting and what is wrong."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    config_file: Path | None = Field(default=None, description="TOML file with settings")
    data_dir: Path = Field(
        default=Path("fleetkeeper-data"), description="where the embedded default keeps state"
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default: SQLite in the data directory",
    )

    host: str = Field(default="127.0.0.1", description="management listener address")
    port: int = Field(default=8080, ge=0, le=65535, description="management listener port")
    tls_cert: Path | None = Field(default=None, description="management listener certificate (PEM)")
    tls_key: Path | None = Field(default=None, description="management listener private key (PEM)")

    device_host: str = Field(default="0.0.0.0", description="device listener address")  # noqa: S104
    device_port: int = Field(default=8443, ge=0, le=65535, description="device listener port")
    device_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="processes accepting device connections (more than 1 needs PostgreSQL)",
    )
    device_server_names: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "::1"],
        description="DNS names and IP addresses in the device listener's certificate",
    )

    device_certificate_days: int = Field(default=30, ge=1, le=397, description="device certificate validity")
    device_key_rotation: Literal["automatic", "approval"] = Field(
        default="automatic", description="whether a device's new key needs an operator's approval"
    )
    enrollment_limit_per_address: str = Field(default="60/minute")
    enrollment_limit_per_network: str = Field(
        default="600/minute", description="enrollment requests (polls too) from one network prefix"
    )
    enrollment_network_prefix_v4: int = Field(
        default=24, ge=8, le=32, description="the IPv4 prefix length of one network for its limit"
    )
    enrollment_network_prefix_v6: int = Field(
        default=56, ge=16, le=128, description="the IPv6 prefix length of one network for its limit"
    )
    enrollment_queue_limit: int = Field(
        default=10_000, ge=1, description="devices waiting for an operator at once; new requests wait"
    )
    enrollment_pending_days: int = Field(
        default=7, ge=1, le=365, description="how long an undecided enrollment request is kept"
    )

    object_store_url: str | None = Field(
        default=None,
        description="release payloads: s3://bucket/prefix, or a directory (default: data_dir/objects)",
    )
    s3_endpoint: str | None = Field(default=None, description="S3-compatible endpoint URL (default: AWS)")
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_allow_http: bool = Field(default=False, description="allow an http:// S3 endpoint (tests, loopback)")
    presigned_url_seconds: int = Field(default=300, ge=10, le=3600, description="lifetime of download links")
    max_release_bytes: int = Field(
        default=4 * 1024**3, ge=1024, description="largest release artifact accepted"
    )

    webhook_allow_private_targets: bool = Field(
        default=False,
        description="let webhooks post to loopback and private addresses (on-premises receivers)",
    )

    terminal_idle_timeout: float = Field(
        default=900.0, ge=1, le=86400, description="seconds without input or output before a terminal closes"
    )
    terminal_max_session_seconds: float = Field(
        default=4 * 3600.0, ge=1, le=7 * 86400, description="longest terminal session"
    )
    terminal_max_sessions_per_device: int = Field(
        default=4, ge=1, le=100, description="terminal sessions open at once on one device"
    )
    terminal_max_file_bytes: int = Field(
        default=64 * 1024**2, ge=1, description="largest file uploaded to or downloaded from a device"
    )
    terminal_open_timeout: float = Field(
        default=10.0, ge=0.1, le=300, description="how long to wait for a device to answer an open"
    )
    terminal_max_recording_bytes: int = Field(
        default=16 * 1024**2, ge=1024, description="output kept in one session's recording"
    )

    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses of reverse proxies whose X-Forwarded-For names the client",
    )

    rate_limit_storage: str = Field(
        default="memory://",
        description="memory:// (one process) or redis://host:port/db (shared by replicas)",
    )
    rate_limit_key_prefix: str = Field(
        default="fleetkeeper",
        pattern=r"^[A-Za-z0-9:_-]{1,64}$",
        description="Redis key prefix (one per fleet)",
    )
    sign_in_limit_per_address: str = Field(
        default="30/minute", description="sign-in attempts from one client address, at any accounts"
    )
    sign_in_limit_per_account: str = Field(
        default="10/minute", description="sign-in attempts at one account from one client network"
    )
    sign_in_failures_per_address: int = Field(
        default=20,
        ge=1,
        description="failed sign-ins from one client address, at any accounts, before it waits",
    )
    sign_in_failures_per_account: int = Field(
        default=100,
        ge=1,
        description="failed sign-ins at one account, from all networks together, before it waits",
    )
    sign_in_network_prefix_v4: int = Field(
        default=24, ge=8, le=32, description="the IPv4 prefix length of one client network for sign-in"
    )
    sign_in_network_prefix_v6: int = Field(
        default=64, ge=16, le=128, description="the IPv6 prefix length of one client network for sign-in"
    )
    sign_in_known_network_days: int = Field(
        default=30,
        ge=0,
        le=366,
        description="an account's sign-ins from a network it signed in from this recently are not "
        "held back by its failures from everywhere (0: none are)",
    )
    api_limit_per_principal: str = Field(default="1200/minute")

    oidc_issuer: str | None = Field(default=None, description="OpenID provider; enables SSO sign-in")
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    oidc_redirect_url: str | None = Field(
        default=None, description="this server's callback URL as the provider knows it"
    )
    oidc_scopes: str = "openid profile email groups"
    oidc_groups_claim: str = "groups"
    oidc_role_mapping: dict[str, list[str]] = Field(
        default_factory=dict, description="provider group → fleetkeeper roles"
    )

    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info")
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console on a terminal, JSON otherwise"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _TomlFileSource(settings_cls, init_settings)

    @field_validator("device_server_names")
    @classmethod
    def _names_not_empty(cls, names: list[str]) -> list[str]:
        if not names or any(not name.strip() for name in names):
            raise ValueError("needs at least one non-empty DNS name or IP address")
        return names

    @field_validator(
        "sign_in_limit_per_address",
        "sign_in_limit_per_account",
        "api_limit_per_principal",
        "enrollment_limit_per_address",
        "enrollment_limit_per_network",
    )
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError:
            raise ValueError('must look like "10/minute" or "100 per hour"') from None
        return value

    @field_validator("rate_limit_storage")
    @classmethod
    def _rate_limit_storage(cls, value: str) -> str:
        if not value.startswith(("memory://", "redis://", "rediss://")):
            raise ValueError("must start with memory://, redis:// or rediss://")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address or network") from None
        return values

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, url: str | None) -> str | None:
        if url is None:
            return None
        if url.startswith(("postgresql://", "postgres://")):
            url = "postgresql+asyncpg://" + url.split("://", 1)[1]
        if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "must start with sqlite+aiosqlite:// or postgresql+asyncpg:// (or postgresql://)"
            )
        return url

    @model_validator(mode="after")
    def _oidc_complete(self) -> Settings:
        if self.oidc_issuer and not (self.oidc_client_id and self.oidc_client_secret):
            raise ValueError("oidc_issuer needs oidc_client_id and oidc_client_secret")
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file: {path}")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'fleetkeeper.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def management_url(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{_url_host(self.host)}:{self.port}"

    @property
    def device_url(self) -> str:
        host = self.device_server_names[0] if self.device_host in ("0.0.0.0", "::") else self.device_host  # noqa: S104
        return f"https://{_url_host(host)}:{self.device_port}"


def _url_host(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


class _TomlFileSource(PydanticBaseSettingsSource):
    """Reads the TOML file named by --config or FLEETKEEPER_CONFIG_FILE."""

    def __init__(self, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        init_values = init_settings()
        path = init_values.get("config_file") or os.environ.get(CONFIG_FILE_ENV)
        self._values = _read_toml(Path(path)) if path else {}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config_file: no such file: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config_file: {path} is not valid TOML: {exc}") from None


def load_settings(**overrides: Any) -> Settings:
    """Build settings; options given as None are left to the other sources."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for error in exc.errors(include_input=False, include_url=False):
        location = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            lines.append(f"  {location}: unknown setting")
            continue
        setting = f"{location} ({ENV_PREFIX}{location.split('.')[0].upper()})" if location else "settings"
        lines.append(f"  {setting}: {error['msg']}")
    return "\n".join(lines)
