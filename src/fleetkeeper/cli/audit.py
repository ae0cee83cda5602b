"""`fleetkeeper audit`: verify the chain, export records, prune old ones."""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TextIO, TypeVar

import typer
from sqlalchemy.exc import SQLAlchemyError

from fleetkeeper.core.config import Settings
from fleetkeeper.core.db import Database
from fleetkeeper.core.errors import ProblemError

audit_app = typer.Typer(no_args_is_help=True, help="The audit log: verify, export, prune.")

T = TypeVar("T")


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"


@audit_app.command("verify")
def verify_command(
    config: cli.ConfigOption = None,
    data_dir: cli.DataDirOption = None,
    database_url: cli.DatabaseOption = None,
) -> None:
    """Recompute the hash chain and name the first record that does not fit (exit 1)."""
    from fleetkeeper.audit import checkpoint_key_path, load_checkpoint_public_key, verify

    settings = cli.settings_from(config=config, data_dir=data_dir, database_url=database_url)
    try:
        public_key = load_checkpoint_public_key(checkpoint_key_path(settings.data_dir))
    except (OSError, ValueError) as exc:
        cli.fail(f"cannot read the checkpoint key: {exc}")
    result = _run(settings, lambda database: verify(database, checkpoint_key=public_key))
    if result.ok:
        span = f", seq {result.first_seq}..{result.last_seq}" if result.checked else ""
        typer.echo(f"audit chain intact: {result.checked} records{span}")
        if result.head_hash:
            typer.echo(f"head hash: {result.head_hash}")
        return
    named = f"id {result.bad_id}" if result.bad_id else "record missing"
    typer.echo(f"audit chain broken at record seq {result.bad_seq} ({named}): {result.reason}")
    raise typer.Exit(1)


@audit_app.command("export")
def export_command(
    output_format: Annotated[
        ExportFormat, typer.Option("--format", help="jsonl or csv")
    ] = ExportFormat.jsonl,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="file [standard output]")] = None,
    actor: Annotated[str | None, typer.Option(help="actor id or name")] = None,
    action: Annotated[str | None, typer.Option(help='exact, or a prefix: "user.*"')] = None,
    object_type: Annotated[str | None, typer.Option(help="object type")] = None,
    object_id: Annotated[str | None, typer.Option(help="object id")] = None,
    outcome: Annotated[str | None, typer.Option(help="success, failure or denied")] = None,
    since: Annotated[str | None, typer.Option(help="from this time (RFC 3339, inclusive)")] = None,
    until: Annotated[str | None, typer.Option(help="up to this time (RFC 3339, exclusive)")] = None,
    config: cli.ConfigOption = None,
    data_dir: cli.DataDirOption = None,
    database_url: cli.DatabaseOption = None,
) -> None:
    """Write records, oldest first, as JSON lines or CSV."""
    from fleetkeeper.audit import AuditFilter, export_csv, export_jsonl
    from fleetkeeper.audit.service import filter_conditions

    filters = AuditFilter(
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=object_id,
        outcome=outcome,
        since=_aware_time("--since", since) if since else None,
        until=_aware_time("--until", until) if until else None,
    )
    try:
        filter_conditions(filters)  # a bad filter fails before the output file is touched
    except ProblemError as exc:
        cli.fail(exc.detail)
    settings = cli.settings_from(config=config, data_dir=data_dir, database_url=database_url)
    exporter = export_jsonl if output_format is ExportFormat.jsonl else export_csv

    with _output(output) as out:
        _run(settings, lambda database: _write(exporter(database, filters), out))


@audit_app.command("prune")
def prune_command(
    before: Annotated[str, typer.Option(help="delete records older than this time (RFC 3339 with zone)")],
    config: cli.ConfigOption = None,
    data_dir: cli.DataDirOption = None,
    database_url: cli.DatabaseOption = None,
) -> None:
    """Delete old records, leaving a signed checkpoint so that the rest still verifies."""
    from fleetkeeper.audit import Actor, checkpoint_key_path, load_or_create_checkpoint_key, prune
    from fleetkeeper.audit.retention import AuditChainBrokenError

    cutoff = _aware_time("--before", before)
    if cutoff > datetime.now(UTC):
        cli.fail("--before is in the future")
    settings = cli.settings_from(config=config, data_dir=data_dir, database_url=database_url)
    try:
        signer = load_or_create_checkpoint_key(checkpoint_key_path(settings.data_dir))
    except (OSError, ValueError) as exc:
        cli.fail(f"cannot read or create the checkpoint key: {exc}")
    actor = Actor(kind="system", name=f"cli:{_os_user()}")
    try:
        result = _run(settings, lambda database: prune(database, before=cutoff, signer=signer, actor=actor))
    except AuditChainBrokenError as exc:
        cli.fail(f"refusing to prune: {exc}; run `fleetkeeper audit verify`")
    if not result.deleted:
        typer.echo("nothing to prune")
        return
    typer.echo(
        f"pruned {result.deleted} records; the chain now starts at seq {result.first_kept_seq} "
        f"(checkpoint {result.checkpoint_id})"
    )


@contextmanager
def _output(path: Path | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    # Audit records name people and addresses: a file written here is its owner's alone.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8", newline="") as file:
        yield file


async def _write(chunks: AsyncIterator[str], out: TextIO) -> None:
    async for chunk in chunks:
        out.write(chunk)


def _aware_time(option: str, value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        cli.fail(f"{option}: not an RFC 3339 time: {value!r}")
    if parsed.tzinfo is None:
        cli.fail(f"{option}: give a time zone, e.g. 2026-01-01T00:00:00Z")
    return parsed


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _run(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """Runs `work` on the settings' database once its schema is at head."""
    from fleetkeeper.core.migrations import migration_state

    async def main() -> T:
        database = Database(settings.resolved_database_url)
        try:
            state = await migration_state(database)
            if not state.at_head:
                cli.fail(state.describe())
            return await work(database)
        finally:
            await database.dispose()

    try:
        return asyncio.run(main())
    except ProblemError as exc:
        cli.fail(exc.detail)
    except (SQLAlchemyError, OSError) as exc:
        cli.fail(f"cannot read the audit log: {exc}")


# Imported last: cli.main imports this module to register `audit_app`, and the option types and
# helpers above are only looked up when a command runs.
from fleetkeeper.cli import main as cli  # noqa: E402
