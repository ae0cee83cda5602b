"""What can go wrong, in a form a person (and a script) can act on: every failure has a stable `code`."""

from __future__ import annotations


class AgentError(Exception):
    """An expected failure. The CLI prints `error: <code>: <message>` and exits 1, without a traceback."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ServerError(AgentError):
    """The server answered with a problem+json document; `code` is its stable code."""

    def __init__(self, code: str, message: str, *, status: int, request_id: str | None = None) -> None:
        super().__init__(code, message)
        self.status = status
        self.request_id = request_id

    def __str__(self) -> str:
        text = f"{self.code}: {self.message} (HTTP {self.status}"
        return text + (f", request id {self.request_id})" if self.request_id else ")")


class UpdateRefused(AgentError):  # noqa: N818 - the name the daemon and the docs use
    """An update the agent will not take because its metadata or payload does not prove itself: what a
    compromised or broken server could cause (`metadata_expired`, `invalid_metadata`, `rollback_attack`,
    `device_mismatch`, `device_type_mismatch`, `repositories_disagree`, `unknown_target`,
    `download_too_large`, `hash_mismatch`). Not retryable as is, unlike `network_error`."""
