"""`fleetkeeper users`: account recovery from the server's own console."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from fleetkeeper.access.administrators import Granted

users_app = typer.Typer(no_args_is_help=True, help="Accounts, from the server's console.")


@users_app.command("reset-password")
def reset_password(
    username: Annotated[str, typer.Argument(help="the account, e.g. admin")],
    config: cli.ConfigOption = None,
    data_dir: cli.DataDirOption = None,
    database_url: cli.DatabaseOption = None,
) -> None:
    """Print a new one-time password for a local account (and enable it): for an administrator
    who lost theirs. Whoever can run this can read the database anyway."""
    from fleetkeeper.access.service import recover_password
    from fleetkeeper.core.db import Database
    from fleetkeeper.core.errors import ProblemError

    settings = cli.settings_from(config=config, data_dir=data_dir, database_url=database_url)

    async def run() -> str:
        database = Database(settings.resolved_database_url)
        try:
            return await recover_password(database, username)
        finally:
            await database.dispose()

    try:
        password = asyncio.run(run())
    except ProblemError as exc:
        cli.fail(f"{exc.code}: {exc.detail}")
    typer.echo(f"one-time password for {username}: {password}\nIt must be changed at the next sign-in.")


@users_app.command("reset-2fa")
def reset_second_factor(
    username: Annotated[str, typer.Argument(help="the account, e.g. admin")],
    config: cli.ConfigOption = None,
    data_dir: cli.DataDirOption = None,
    database_url: cli.DatabaseOption = None,
) -> None:
    """Turn off the two-factor sign-in of an account and end its sessions: for someone who lost
    their authenticator and recovery codes when no other administrator can reset it."""
    from fleetkeeper.access.twofactor import recover
    from fleetkeeper.core.db import Database
    from fleetkeeper.core.errors import ProblemError

    settings = cli.settings_from(config=config, data_dir=data_dir, database_url=database_url)

    async def run() -> str:
        database = Database(settings.resolved_database_url)
        try:
            return await recover(database, username)
        finally:
            await database.dispose()

    try:
        account = asyncio.run(run())
    except ProblemError as exc:
        cli.fail(f"{exc.code}: {exc.detail}")
    typer.echo(
        f"two-factor sign-in of {account} is off and its sessions are ended.\n"
        "The password alone signs in now; enrol again from My account."
    )


@users_app.command("grant-admin")
def grant_admin(
    username: Annotated[str, typer.Argument(help="the account, e.g. admin")],
    config: cli.ConfigOption = None,
    data_dir: cli.DataDirOption = None,
    database_url: cli.DatabaseOption = None,
) -> None:
    """Give an account the admin role (every permission, unscoped) and enable it: for a fleet
    left without an administrator, e.g. a database restored from before. Its other roles stay."""
    from fleetkeeper.access.administrators import grant_admin_role
    from fleetkeeper.core.db import Database
    from fleetkeeper.core.errors import ProblemError

    settings = cli.settings_from(config=config, data_dir=data_dir, database_url=database_url)

    async def run() -> Granted:
        database = Database(settings.resolved_database_url)
        try:
            return await grant_admin_role(database, username)
        finally:
            await database.dispose()

    try:
        result = asyncio.run(run())
    except ProblemError as exc:
        cli.fail(f"{exc.code}: {exc.detail}")
    if not result.granted and not result.enabled:
        typer.echo(f"{result.username} already holds the admin role, unscoped: nothing changed.")
        return
    enabled = " and is enabled again" if result.enabled else ""
    typer.echo(f"{result.username} now holds the admin role, unscoped{enabled}.")


# Imported last, as in cli/audit.py: cli.main imports this module to register the sub-app.
from fleetkeeper.cli import main as cli  # noqa: E402
