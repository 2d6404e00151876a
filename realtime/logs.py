"""Structured logging: every record carries the session and request id it belongs to.

Framework-free. Sessions call :func:`bind_session` once in the task that runs them
(context variables follow ``asyncio`` tasks created afterwards), or wrap a logger
with :func:`session_logger`. ``configure_logging`` installs a text or JSON formatter
that prints those ids.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar, Token
from typing import Any

# Context variables are per task/thread by construction, so they are not shared mutable state.
SESSION_ID: ContextVar[str | None] = ContextVar("avatar_session_id", default=None)
REQUEST_ID: ContextVar[str | None] = ContextVar("avatar_request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(ctx)s: %(message)s"


def bind_session(session_id: str | None) -> Token[str | None]:
    """Tag every log record made in this context (and tasks started from it) with ``session_id``."""
    return SESSION_ID.set(session_id)


class SessionLoggerAdapter(logging.LoggerAdapter):
    """A logger whose records carry a fixed ``session_id`` (for code outside the session's context)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("session_id", (self.extra or {}).get("session_id"))
        kwargs["extra"] = extra
        return msg, kwargs


def session_logger(logger: logging.Logger | str, session_id: str) -> SessionLoggerAdapter:
    """``logger`` with every record tagged with ``session_id``."""
    base = logging.getLogger(logger) if isinstance(logger, str) else logger
    return SessionLoggerAdapter(base, {"session_id": session_id})


class ContextFilter(logging.Filter):
    """Copies the current session/request ids onto each record (explicit ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "session_id", None) is None:
            record.session_id = SESSION_ID.get()
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        parts = []
        if record.session_id:
            parts.append(f"session={record.session_id}")
        if record.request_id:
            parts.append(f"request={record.request_id}")
        record.ctx = f" [{' '.join(parts)}]" if parts else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, ids, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("session_id", "request_id"):
            value = getattr(record, key, None)
            if value:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def make_handler(fmt: str = "text", stream: Any = None) -> logging.Handler:
    """A stream handler with the context filter and a ``"text"`` or ``"json"`` formatter."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(level: str | int = "INFO", fmt: str = "text") -> None:
    """Replace the root logger's handlers with one context-aware handler."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(make_handler(fmt))
    root.setLevel(level.upper() if isinstance(level, str) else level)
