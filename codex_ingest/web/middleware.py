"""Middlewares: request ids on every response, and errors as JSON.

Order in the app (outermost first): request_id, the HTTP metrics
(telemetry/http_metrics.py), errors_as_json. The metrics sit between them so they
count the status the client actually gets (a 401 as 401, not as an
exception).
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

from codex_ingest.errors import IngestError
from codex_ingest.web.responses import RESPONSE_HEADERS, error_response

log = logging.getLogger("codex_ingest.errors")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# A caller's own request id is kept when it is short and harmless to echo.
_CALLER_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

REQUEST_ID_HEADER = "X-Request-Id"

# Generated ids are this process's random prefix plus a counter: unique
# across workers and restarts like a uuid4, without a uuid4's urandom call
# and object on every request.
_ID_PREFIX = secrets.token_hex(8)
_id_counter = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


@web.middleware
async def request_id(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get(REQUEST_ID_HEADER)
    rid = given if given is not None and _CALLER_REQUEST_ID.fullmatch(given) else new_request_id()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        # Raised past errors_as_json (only possible if a middleware between
        # them raises); still answer with the id.
        exc.headers[REQUEST_ID_HEADER] = rid
        raise
    response.headers[REQUEST_ID_HEADER] = rid
    return response


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except IngestError as exc:
        return error_response(exc.status, exc.code, exc.detail, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # Router answers (404, 405) and aiohttp's own limits, in our JSON shape.
        code = exc.reason.lower().replace(" ", "_")
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in {"content-type", "content-length"}}
        return error_response(exc.status, code, exc.reason, headers)
    except Exception:
        # A 500 is always a bug: log it with its traceback, tell the client little.
        log.exception("unhandled error", extra={"path": request.path, "method": request.method})
        return error_response(500, "internal_error", "an unexpected error occurred; it has been logged")


async def response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response's own headers, set before aiohttp's Server default applies."""
    response.headers.update(RESPONSE_HEADERS)
