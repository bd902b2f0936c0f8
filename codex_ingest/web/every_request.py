"""What every request passes: its request id, its HTTP metrics, errors as
JSON, and giving back what its body took of the worker's body budget
(web/body.py); and the headers every response carries.

A wrapper each route's handler is registered through (``EveryRequest``,
web/routes.py), not a middleware: with a middleware anywhere in the
application, aiohttp builds a chain around every handler, its own per-app
layer included, on every request. Without one it calls the handler itself.
Errors are still translated in one place, here. A request no route matches
reaches ``unmatched`` (the last route of the application and of the console),
so a 404 or a 405 is answered in the same JSON shape, with a request id.

The order inside is what three middlewares would give: the error is turned
into its JSON answer first, so the metrics count the status the client
actually gets (a 401 as 401, not as an exception), and the request id goes
on whatever is answered.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

from codex_ingest.errors import IngestError
from codex_ingest.telemetry.http_metrics import HttpMetrics
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


def request_id(request: web.BaseRequest) -> str:
    """The caller's own request id, if it sent a short safe one, else a new one."""
    given = request.headers.get(REQUEST_ID_HEADER)
    return given if given is not None and _CALLER_REQUEST_ID.fullmatch(given) else new_request_id()


class EveryRequest:
    """Wraps a route's handler in what every request passes (the module's docstring).
    ``release_body``: gives back what a request's body took of the worker's budget (web/body.py)."""

    __slots__ = ("_http_metrics", "_release_body")

    def __init__(self, http_metrics: HttpMetrics, release_body: Callable[[web.Request], None] | None = None) -> None:
        self._http_metrics = http_metrics
        self._release_body = release_body

    def __call__(self, handler: Handler, *, path_template: str | None = None) -> Handler:
        """``handler`` wrapped; ``path_template``: the metrics' label instead of the route's own path."""
        http_metrics, release_body = self._http_metrics, self._release_body

        async def every_request(request: web.Request) -> web.StreamResponse:
            rid = request_id(request)
            timing = http_metrics.start(request, path_template)
            try:
                response = await _answer_errors(request, handler)
            except web.HTTPException as exc:  # a redirect or other non-error: passed on as aiohttp raised it
                http_metrics.finish(timing, exc.status)
                exc.headers[REQUEST_ID_HEADER] = rid
                raise
            except BaseException:  # cancelled: no answer to count, but no longer in progress
                timing[1].dec()
                raise
            finally:
                # The handler is done with its body: what it held goes back to the budget.
                if release_body is not None:
                    release_body(request)
            http_metrics.finish(timing, response.status)
            response.headers[REQUEST_ID_HEADER] = rid
            return response

        return functools.update_wrapper(every_request, handler)


# The last route of an application: whatever no other route matched. Its name tells it
# from a matched route (web/body.py: a body is never invited to it).
UNMATCHED_ROUTE = "/{unmatched:.*}"
UNMATCHED_NAME = "unmatched"


async def unmatched(request: web.Request) -> web.StreamResponse:
    """405 when a route of this application has the path for other methods, else 404 (translated
    into the JSON shape by EveryRequest, like any error). Registered last, as UNMATCHED_ROUTE."""
    own = request.match_info.route.resource
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not own:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


async def _answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's answer, or its error as our JSON shape (errors translated once, here)."""
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
