"""`fleetkeeper`: serve, migrate, and (in later commands) operate a fleet."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

import fleetkeeper
from fleetkeeper.cli.audit import audit_app
from fleetkeeper.cli.releases import bundle_app, keys_app, release_app, trust_app
from fleetkeeper.cli.terminal import terminal_app
from fleetkeeper.cli.users import users_app
from fleetkeeper.core.config import ConfigError, Settings, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Keep a fleet of Linux devices secure.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(db_app, name="db")
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")
app.add_typer(trust_app, name="trust")
app.add_typer(release_app, name="release")
app.add_typer(bundle_app, name="bundle")
app.add_typer(users_app, name="users")
app.add_typer(terminal_app, name="terminal")

ConfigOption = Annotated[Path | None, typer.Option("--config", help="TOML settings file")]
DataDirOption = Annotated[Path | None, typer.Option("--data-dir", help="data directory [./fleetkeeper-data]")]
DatabaseOption = Annotated[str | None, typer.Option("--database-url", help="SQLAlchemy database URL")]


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"fleetkeeper: {message}", err=True)
    raise typer.Exit(code)


def settings_from(**options: Any) -> Settings:
    config_file = options.pop("config", None)
    try:
        return load_settings(config_file=config_file, **options)
    except ConfigError as exc:
        fail(str(exc), code=2)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(fleetkeeper.__version__)


@app.command()
def serve(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseOption = None,
    host: Annotated[str | None, typer.Option(help="management listener address [127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="management listener port [8080]")] = None,
    device_host: Annotated[str | None, typer.Option(help="device listener address [0.0.0.0]")] = None,
    device_port: Annotated[int | None, typer.Option(help="device listener port [8443]")] = None,
    device_workers: Annotated[
        int | None,
        typer.Option(help="processes accepting device connections, 1-64; above 1 needs PostgreSQL [1]"),
    ] = None,
) -> None:
    """Run the server: the management listener and the device listener."""
    from fleetkeeper.core.logging import configure_logging
    from fleetkeeper.server.runtime import StartupError
    from fleetkeeper.server.serve import run as run_server

    settings = settings_from(
        config=config,
        data_dir=data_dir,
        database_url=database_url,
        host=host,
        port=port,
        device_host=device_host,
        device_port=device_port,
        device_workers=device_workers,
    )
    configure_logging(settings.log_level, settings.log_format)
    try:
        run_server(settings)
    except StartupError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass


@app.command("demo", help="Run the server with a simulated fleet (loopback only), for a first look.")
def demo_command(
    data_dir: DataDirOption = None,
    port: Annotated[int | None, typer.Option(help="management listener port [8080]")] = None,
    device_port: Annotated[int | None, typer.Option(help="device listener port [8443]")] = None,
    devices: Annotated[int, typer.Option(min=1, max=100, help="simulated devices")] = 8,
    interval: Annotated[float, typer.Option(min=1, help="seconds between a device's check-ins")] = 5.0,
    duration: Annotated[float, typer.Option(min=60, help="seconds the fleet lives")] = 7 * 24 * 3600.0,
) -> None:
    from fleetkeeper.cli.demo import demo

    demo(data_dir, port, device_port, devices, interval, duration)


@db_app.command("upgrade")
def db_upgrade(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseOption = None,
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
) -> None:
    """Migrate the database schema to the latest revision (or the one given)."""
    from fleetkeeper.core.migrations import upgrade

    settings = settings_from(config=config, data_dir=data_dir, database_url=database_url)
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        upgrade(settings.resolved_database_url, revision)
    except Exception as exc:
        fail(f"migration failed: {exc}")
    typer.echo(f"database at {revision}")


@db_app.command("current")
def db_current(
    config: ConfigOption = None, data_dir: DataDirOption = None, database_url: DatabaseOption = None
) -> None:
    """Show the database's schema revision and whether it is at head."""
    from fleetkeeper.core.db import Database
    from fleetkeeper.core.migrations import MigrationState, migration_state

    settings = settings_from(config=config, data_dir=data_dir, database_url=database_url)

    async def read() -> MigrationState:
        database = Database(settings.resolved_database_url)
        try:
            return await migration_state(database)
        finally:
            await database.dispose()

    state = asyncio.run(read())
    typer.echo("at head: " + ", ".join(sorted(state.current)) if state.at_head else state.describe())
    if not state.at_head:
        raise typer.Exit(1)


def main() -> None:
    from fleetkeeper.server.wiring import wire_domains

    # Commands that change users, roles or releases call the domains directly: their checks
    # between domains must hold here as on the server.
    wire_domains()
    app(prog_name="fleetkeeper")


if __name__ == "__main__":
    main()
