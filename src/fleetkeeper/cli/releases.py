"""`fleetkeeper keys`, `trust` and `release`: the release engineer's offline tooling."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from fleetkeeper.releases.errors import ReleaseError

keys_app = typer.Typer(no_args_is_help=True, help="Offline root and release (targets) keys.")
trust_app = typer.Typer(no_args_is_help=True, help="The server's trust: initial roots, root rotation.")
release_app = typer.Typer(no_args_is_help=True, help="Release artifacts: create, sign, upload.")
bundle_app = typer.Typer(no_args_is_help=True, help="Offline bundles for air-gapped sites.")

T = TypeVar("T")

KeysOption = Annotated[Path, typer.Option("--keys", help="offline key directory (keys.json)")]
ServerOption = Annotated[str, typer.Option("--server", help="management URL, https://host:port")]
TokenOption = Annotated[str, typer.Option("--token", help="API token", envvar="FLEETKEEPER_TOKEN")]
ExpiresOption = Annotated[int, typer.Option("--expires-days", min=1, help="metadata lifetime in days")]


def _guarded(action: Callable[[], T]) -> T:
    # One line with the problem code, exit 1: the engineer acts on the code, not on a traceback.
    try:
        return action()
    except ReleaseError as exc:
        cli.fail(f"{exc.code}: {exc.detail}")
    except OSError as exc:
        cli.fail(f"io_error: {exc}")


def _expires(days: int) -> datetime:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        key, separator, text = value.partition("=")
        if not separator or not key:
            cli.fail(f"invalid_argument: {option} takes KEY=VALUE, got {value!r}")
        pairs[key] = text
    return pairs


@keys_app.command("init")
def keys_init(
    directory: Annotated[Path, typer.Argument(help="new key directory")],
    threshold: Annotated[int, typer.Option(help="signatures needed per role")] = 1,
    count: Annotated[int, typer.Option(help="keys per role")] = 1,
) -> None:
    """Create root and release keys (Ed25519, private files 0600) and keys.json."""
    from fleetkeeper.releases.keys import init_keys

    _guarded(lambda: init_keys(directory, threshold, count))
    typer.echo(f"{count} root and {count} targets keys, threshold {threshold}, in {directory}")


@trust_app.command("init")
def trust_init(
    keys: KeysOption, server: ServerOption, token: TokenOption, expires_days: ExpiresOption = 365
) -> None:
    """Sign root v1, targets v1 and the director root v1 offline and install them on the server."""
    from fleetkeeper.releases import remote
    from fleetkeeper.releases.trust import build_initial_trust, online_keys_from_json

    def run() -> None:
        online = online_keys_from_json(remote.fetch_online_keys(server, token))
        trust = build_initial_trust(keys, online, _expires(expires_days))
        body = {
            "root": trust.root.to_dict(),
            "targets": trust.targets.to_dict(),
            "director_root": trust.director_root.to_dict(),
        }
        remote.post_trust(server, token, body)

    _guarded(run)
    typer.echo("trust installed: root v1, targets v1, director root v1")


@trust_app.command("rotate-root")
def trust_rotate_root(
    keys: KeysOption,
    new_keys: Annotated[Path, typer.Option("--new-keys", help="the new root keys' directory")],
    server: ServerOption,
    token: TokenOption,
    director: Annotated[bool, typer.Option("--director", help="rotate the director root too")] = False,
    expires_days: ExpiresOption = 365,
) -> None:
    """Publish root vN+1 signed by the old root threshold and the new one."""
    from fleetkeeper.releases import remote
    from fleetkeeper.releases.trust import parse_root, rotate_root

    def run() -> int:
        expires = _expires(expires_days)
        current = parse_root(remote.fetch_metadata(server, token, "root.json"))
        new = rotate_root(current, keys, new_keys, expires)
        body = {"root": new.to_dict()}
        if director:
            director_root = parse_root(remote.fetch_director_root(server, token))
            body["director_root"] = rotate_root(director_root, keys, new_keys, expires).to_dict()
        remote.post_root(server, token, body)
        return new.signed.version

    version = _guarded(run)
    typer.echo(f"root v{version} published" + (" (and the director root)" if director else ""))


@release_app.command("create")
def release_create(
    payload: Annotated[list[Path], typer.Argument(help="one file, or several files/directories (a tree)")],
    name: Annotated[str, typer.Option(help="release name")],
    version: Annotated[str, typer.Option(help="release version")],
    counter: Annotated[int, typer.Option(help="release counter (anti-rollback), >= 0")],
    module: Annotated[str, typer.Option("--type", help="update module: file, directory, rootfs-ab, x-…")],
    device_type: Annotated[list[str], typer.Option("--device-type", help="compatible device type")],
    output: Annotated[Path, typer.Option("--output", "-o", help="artifact file (.fkr)")],
    depends: Annotated[list[str] | None, typer.Option("--depends", help="KEY=VALUE")] = None,
    provides: Annotated[list[str] | None, typer.Option("--provides", help="KEY=VALUE")] = None,
    sbom: Annotated[Path | None, typer.Option(help="CycloneDX SBOM (JSON)")] = None,
) -> None:
    """Pack a release artifact."""
    from fleetkeeper.releases.artifact import create_artifact

    release = _guarded(
        lambda: create_artifact(
            output,
            name=name,
            version=version,
            release_counter=counter,
            module=module,
            device_types=device_type,
            depends=_pairs(depends or [], "--depends"),
            provides=_pairs(provides or [], "--provides"),
            payload_paths=payload,
            sbom_path=sbom,
        )
    )
    typer.echo(f"{output}: {name} {version}, payload sha256 {release['payload']['sha256']}")


@release_app.command("sign")
def release_sign(
    artifact: Annotated[Path, typer.Argument(help="artifact file (.fkr)")],
    keys: KeysOption,
    current_targets: Annotated[
        Path | None, typer.Option("--current-targets", help="the repository's targets.json (air-gapped)")
    ] = None,
    server: Annotated[str | None, typer.Option("--server", help="management URL")] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="FLEETKEEPER_TOKEN", help="API token")
    ] = None,
    expires_days: ExpiresOption = 365,
) -> None:
    """Sign the release into targets vN+1 (or add a signature to an already signed artifact)."""
    from fleetkeeper.releases import remote
    from fleetkeeper.releases.signing import sign_release
    from fleetkeeper.releases.trust import parse_targets

    if (current_targets is None) == (server is None):
        cli.fail("invalid_argument: give --current-targets FILE or --server URL --token T")
    if server is not None and token is None:
        cli.fail("invalid_argument: --server needs --token")

    def run() -> tuple[int, int]:
        if current_targets is not None:
            current = parse_targets(current_targets.read_bytes())
        else:
            # Both were checked above; str() only tells the type checker.
            current = parse_targets(remote.fetch_metadata(str(server), str(token), "targets.json"))
        signed = sign_release(artifact, keys, current, _expires(expires_days))
        return signed.signed.version, len(signed.signatures)

    version, signatures = _guarded(run)
    typer.echo(f"{artifact}: targets v{version}, {signatures} signature(s)")


@release_app.command("upload")
def release_upload(
    artifact: Annotated[
        Path, typer.Argument(help="signed artifact file (.fkr)", exists=True, dir_okay=False)
    ],
    server: ServerOption,
    token: TokenOption,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="release tag (repeatable; scopes permissions)")
    ] = None,
) -> None:
    """Stream the artifact to the server, resuming after a broken connection (run it again to
    resume after an interrupted run)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from fleetkeeper.releases.upload_client import UploadError, upload

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(f"uploading {artifact.name}", total=artifact.stat().st_size)
        try:
            release = upload(
                artifact,
                server,
                token,
                tags=tag or [],
                on_progress=lambda sent, total: progress.update(task, completed=sent, total=total),
            )
        except UploadError as exc:
            cli.fail(f"{exc.code}: {exc.detail}")
        except OSError as exc:
            cli.fail(f"io_error: {exc}")
    typer.echo(f"{release['name']} {release['version']} accepted: targets v{release['targets_version']}")


@bundle_app.command("export")
def bundle_export(
    release: Annotated[str, typer.Option("--release", help="release name")],
    version: Annotated[str, typer.Option("--version", help="release version")],
    device_type: Annotated[str, typer.Option("--device-type", help="the devices it is for")],
    server: ServerOption,
    token: TokenOption,
    output: Annotated[Path, typer.Option("-o", "--output", help="bundle file to write")],
) -> None:
    """Write one file holding the metadata chain and the release's target."""
    import httpx2

    partial = output.with_name(output.name + ".partial")
    try:
        with httpx2.stream(
            "GET",
            f"{server.rstrip('/')}/api/v1/releases/{release}/{version}/bundle",
            params={"device_type": device_type},
            headers={"authorization": f"Bearer {token}"},
            timeout=httpx2.Timeout(60.0, connect=10.0),
        ) as response:
            if response.status_code != 200:
                response.read()
                problem = response.json() if response.headers.get("content-type", "").endswith("json") else {}
                code = problem.get("code", response.status_code)
                cli.fail(f"{code}: {problem.get('detail', response.text[:200])}")
            with partial.open("wb") as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)
        partial.replace(output)
    except httpx2.HTTPError as exc:
        partial.unlink(missing_ok=True)
        cli.fail(f"connection_failed: {exc}")
    typer.echo(f"{output}: {release} {version} for {device_type}")


# Imported last, as in cli/audit.py: cli.main imports this module to register the sub-apps.
from fleetkeeper.cli import main as cli  # noqa: E402
