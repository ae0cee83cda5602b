"""Structured logs: JSON when not on a terminal; every line carries the request id when there is one."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import structlog

# The request's fields for every line logged while it is served (its id, its listener). One
# variable set once per request: structlog's contextvars made and reset a variable per field and
# walked the whole context for every line.
_request_fields: ContextVar[dict[str, Any] | None] = ContextVar("fleetkeeper_log_fields", default=None)


@contextmanager
def request_fields(**fields: Any) -> Iterator[None]:
    """`fields` on every line logged inside, by this task and the tasks it starts."""
    token = _request_fields.set(fields)
    try:
        yield
    finally:
        _request_fields.reset(token)


def _add_request_fields(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    fields = _request_fields.get()
    return {**fields, **event} if fields else event


_SHARED_PROCESSORS: list[Any] = [
    _add_request_fields,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(
    level: str = "info", fmt: str = "auto", process_fields: dict[str, Any] | None = None
) -> None:
    """`process_fields` go on every line of this process (a device worker's number, for one)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared = [*_SHARED_PROCESSORS, _adding(process_fields)] if process_fields else _SHARED_PROCESSORS
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    # What no line shows is not gathered for each line (the logging HOWTO's "Optimization"): the
    # caller's frame, found by walking the stack, and the thread's and process's names — about a
    # tenth of a device request's CPU went to its access line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own handlers would print a second, unstructured copy; ours log access lines instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers[:] = []
        uvicorn_logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # Alembic narrates every step at info; keep its warnings.
    logging.getLogger("alembic").setLevel(max(root.level, logging.WARNING))


def _adding(fields: dict[str, Any]) -> Any:
    def add_fields(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        return {**fields, **event}

    return add_fields


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
