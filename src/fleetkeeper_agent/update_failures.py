"""How the update flow words a failure for the server.

A failure never escapes the flow: an exception that escaped would make every check-in run the same
step again, and the device would never report nor take another deployment. So an install that breaks
is rolled back, and a module that cannot be loaded fails the install with nothing installed.
"""

from __future__ import annotations

import logging

from fleetkeeper_agent.errors import AgentError

log = logging.getLogger(__name__)

MAX_REASON = 1000  # characters of an unexpected exception's message in a report


class ModuleLoadError(AgentError):
    """The release's update module cannot be made from this device's software and configuration."""

    def __init__(self, name: str, cause: AgentError) -> None:
        super().__init__(
            cause.code,
            f"the {name} module could not be loaded: {cause.message}; "
            f"check [modules.{name}] in the agent configuration",
        )


def failure(exc: Exception, where: str) -> str:
    """The reason a step failed, for the report. An AgentError is a failure the module foresaw; anything
    else is a bug (or an input that broke a library): it is named by its type, and its traceback goes
    to the log."""
    if isinstance(exc, AgentError):
        return exc.message
    log.error("%s raised %s", where, type(exc).__name__, exc_info=exc)
    return f"{where} raised {_type_and_text(exc)} (unexpected; the traceback is in the agent's log)"


def _type_and_text(exc: Exception) -> str:
    text = str(exc)
    if len(text) > MAX_REASON:
        text = text[:MAX_REASON] + "…"
    return f"{type(exc).__name__}: {text}"
