"""A plain TUF client over HTTP(S), as `fleetkeeper-agent tuf-client` runs it: one repository, one
metadata directory in ngclient's own layout (`root.json`, `timestamp.json`, `snapshot.json`,
`targets.json`, `<delegated role>.json`, with `root_history/`). It is the same verification code the
update flow uses, open to standard conformance tools that drive it against their own repositories.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tuf.api import exceptions
from tuf.api.metadata import Metadata, Root
from tuf.ngclient import Updater

from fleetkeeper_agent.errors import AgentError
from fleetkeeper_agent.fetcher import MtlsFetcher
from fleetkeeper_agent.files import write_atomic

ROOT_FILE = "root.json"
_T = TypeVar("_T")


def init(metadata_dir: Path, trusted_root: Path) -> Path:
    """Store `trusted_root` as the metadata directory's `root.json`; no network. The file must be root
    metadata (its signatures are checked at the first refresh, as ngclient does for any trusted root)."""
    data = trusted_root.read_bytes()
    try:
        Metadata[Root].from_bytes(data)
    except Exception as exc:
        raise AgentError("invalid_metadata", f"{trusted_root}: not TUF root metadata: {exc}") from None
    metadata_dir.mkdir(parents=True, exist_ok=True)
    target = metadata_dir / ROOT_FILE
    if target.is_symlink():
        target.unlink()  # ngclient keeps root.json as a link into root_history/; replace the link itself
    write_atomic(target, data)
    return target


def refresh(metadata_dir: Path, metadata_url: str) -> None:
    """Refresh timestamp, snapshot and targets (and root first) from `metadata_url`."""
    with _fetcher() as fetcher:
        updater = _updater(metadata_dir, metadata_url, fetcher)
        run_tuf_step(updater.refresh)


def download(
    metadata_dir: Path, metadata_url: str, target_name: str, target_base_url: str, target_dir: Path
) -> tuple[Path, bool]:
    """Refresh, then download `target_name` into `target_dir` unless a copy with the signed length and
    hashes is already there. Returns the file and whether it was fetched."""
    target_dir.mkdir(parents=True, exist_ok=True)
    with _fetcher() as fetcher:
        updater = _updater(metadata_dir, metadata_url, fetcher, target_dir, target_base_url)
        run_tuf_step(updater.refresh)
        info = run_tuf_step(lambda: updater.get_targetinfo(target_name))
        if info is None:
            raise AgentError("unknown_target", f"the repository has no target {target_name!r}")
        cached = updater.find_cached_target(info)
        if cached is not None:
            return Path(cached), False
        return Path(run_tuf_step(lambda: updater.download_target(info))), True


def _fetcher() -> MtlsFetcher:
    # Plain HTTP(S) against any repository: the system's CAs, no client certificate.
    return MtlsFetcher(ssl.create_default_context())


def _updater(
    metadata_dir: Path,
    metadata_url: str,
    fetcher: MtlsFetcher,
    target_dir: Path | None = None,
    target_base_url: str | None = None,
) -> Updater:
    if not (metadata_dir / ROOT_FILE).exists():
        raise AgentError("not_initialized", f"no {metadata_dir / ROOT_FILE}: run `tuf-client init` first")
    return run_tuf_step(
        lambda: Updater(
            metadata_dir=str(metadata_dir),
            metadata_base_url=metadata_url,
            target_dir=str(target_dir) if target_dir is not None else None,
            target_base_url=target_base_url,
            fetcher=fetcher,
            bootstrap=None,
        )
    )


def run_tuf_step(action: Callable[[], _T], where: str = "", refused: type[AgentError] = AgentError) -> _T:
    """Run an ngclient step, turning its exceptions into agent error codes: what the repository got
    wrong raises `refused` (the update flow passes UpdateRefused), a failed transfer `network_error`."""
    prefix = f"{where}: " if where else ""
    try:
        return action()
    except exceptions.ExpiredMetadataError as exc:
        raise refused("metadata_expired", f"{prefix}{exc}") from None
    except exceptions.BadVersionNumberError as exc:
        raise refused("rollback_attack", f"{prefix}{exc}") from None
    except exceptions.LengthOrHashMismatchError as exc:
        raise refused("hash_mismatch", f"{prefix}{exc}") from None
    except exceptions.RepositoryError as exc:
        raise refused("invalid_metadata", f"{prefix}{exc}") from None
    except exceptions.DownloadLengthMismatchError as exc:
        raise refused("download_too_large", f"{prefix}{exc}") from None
    except exceptions.DownloadError as exc:
        cause: BaseException = exc
        while cause.__cause__ is not None:  # ngclient wraps the fetcher's error; the innermost says most
            cause = cause.__cause__
        raise AgentError("network_error", f"{prefix}{cause}") from None
