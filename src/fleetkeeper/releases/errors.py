"""Refusals with a stable problem code, so the server and the CLI can name what was wrong."""

from __future__ import annotations


class ReleaseError(Exception):
    """A refusal: `code` is the problem code of docs/software-trust.md, `detail` says why."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class KeysError(ReleaseError):
    """The offline key directory is missing, incomplete or would be overwritten."""


class TrustError(ReleaseError):
    """A root or initial trust that the server must not accept."""


class ArtifactError(ReleaseError):
    """A release artifact (.fkr) that is malformed or unsafe to read."""


class ReleaseRefused(ReleaseError):  # noqa: N818 - the name the server code uses
    """A release upload the server must not accept."""
