"""Structured logging (structlog) with a correlation id per request or job.

The correlation id lives in a context variable, so it follows a request into the order
service, the order events it writes and (through the queue entry) the worker's logs.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

import structlog

correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)

_SECRET_KEYS = ("password", "secret", "token", "api_key", "pin", "totp", "credentials")


def new_correlation_id() -> str:
    return uuid.uuid4().hex[:16]


def _add_correlation_id(
    _: Any, __: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    cid = correlation_id.get()
    if cid is not None and "correlation_id" not in event:
        event["correlation_id"] = cid
    return event


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: never print a value under a secret-looking key."""
    for key in list(event):
        if key != "event" and any(part in key.lower() for part in _SECRET_KEYS):
            event[key] = "***"
    return event


def configure_logging(level: str = "INFO", json: bool = False) -> None:
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=level.upper(), force=True)
    for noisy in ("aiosqlite", "sqlalchemy.engine", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_correlation_id,
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # Logs go to stderr: stdout is for command output (CSV, JSON) people pipe on.
        # Looked up on each use, so a replaced sys.stderr (tests, daemons) is followed.
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
