"""Reading a request's body: within its route's limit, within
BODY_READ_TIMEOUT, and within what the worker may hold of bodies not yet
verified (BODY_BUFFER_BYTES); and answering ``Expect`` by the same limits.

A body is read whole before its signature can be checked, so whoever can
open connections would decide how much a worker holds. Every body taken in
is counted against a per-worker budget from before it is read (its declared
size, or each chunk of a chunked one as it arrives) until its request is
answered; one that does not fit is refused with 503 ``server_busy`` and
``Retry-After``, unread, and its connection closed. A quarter of the budget
is kept for bodies of at most SMALL_BODY bytes: an attacker's large uploads
cannot shut out ordinary events.
"""

from __future__ import annotations

import asyncio

from aiohttp import StreamReader, hdrs, web
from aiohttp.abc import AbstractRouter
from aiohttp.web_urldispatcher import _default_expect_handler as _aiohttp_expect_handler

from codex_ingest.errors import IngestError, PayloadTooLarge, RequestTimeout
from codex_ingest.web.appkeys import SETTINGS
from codex_ingest.web.every_request import REQUEST_ID_HEADER, UNMATCHED_NAME, request_id
from codex_ingest.web.responses import error_response

# Bodies up to this size may use the whole budget; larger ones only three quarters of it.
SMALL_BODY = 64 * 1024
# The most a request to a route that takes no body (GET, HEAD, an unknown
# path) may announce: more is 413 before it is invited or read.
NO_BODY_LIMIT = 64 * 1024

# Answers that say so close their connection at once (web/connection.py): the body they refuse is not read.
CLOSE = {hdrs.CONNECTION: "close"}


class ServerBusy(IngestError):
    """This worker already holds as many request bodies as BODY_BUFFER_BYTES allows; nothing was read or stored.
    Retry after Retry-After seconds."""

    status = 503
    code = "server_busy"
    outcome = "unavailable"

    def __init__(self, detail: str | None = None, *, retry_after: int) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after), **CLOSE}


class BodyBudget:
    """The bytes of request bodies one worker holds before they are verified,
    counted from before they are read until their request is answered."""

    def __init__(self, limit: int, retry_after: int) -> None:
        self.limit = limit
        self.large_limit = limit - limit // 4  # the rest is kept for small bodies
        self.retry_after = retry_after
        self.held = 0

    def fits(self, size: int, total: int) -> bool:
        """Whether ``size`` more bytes of a body of ``total`` so far fit now."""
        return self.held + size <= (self.limit if total <= SMALL_BODY else self.large_limit)

    def take(self, request: web.Request, size: int, total: int) -> None:
        """Count ``size`` bytes against the budget until ``request`` is
        answered (``release``); ServerBusy if they do not fit."""
        if not self.fits(size, total):
            raise self.busy()
        self.held += size
        request[HELD] = request.get(HELD, 0) + size

    def busy(self) -> ServerBusy:
        return ServerBusy(retry_after=self.retry_after)

    def release(self, request: web.Request) -> None:
        """Give back what ``request`` took; the handlers' wrapper (web/every_request.py) calls it once the handler is done."""
        held = request.get(HELD)
        if held:
            self.held -= held
            request[HELD] = 0


BODY_BUDGET = web.AppKey("body_budget", BodyBudget)
HELD = web.RequestKey("body_bytes_held", int)


async def read_body(request: web.Request, max_bytes: int, timeout: float | None = None) -> bytes:
    """The whole body: 413 past ``max_bytes`` (declared or streamed), 503 when
    the worker's body budget cannot take it, 408 when it has not all arrived
    ``timeout`` seconds after the headers."""
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {max_bytes}")
    budget = request.app.get(BODY_BUDGET)
    if budget is not None and declared is not None:
        budget.take(request, declared, declared)  # before a byte is read
    content = request.content
    if content.is_eof() and declared is not None:
        # Usually the whole body came with the headers: its size is known and
        # within the limit, so take the buffered bytes as they are, without a
        # timer or request.read()'s copying loop.
        return content.read_nowait()
    try:
        async with asyncio.timeout(timeout):
            return await _read_within(request, content, max_bytes, budget if declared is None else None)
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout:g} s") from None


async def _read_within(request: web.Request, content: StreamReader, max_bytes: int, budget: BodyBudget | None) -> bytes:
    """Read to the end, refusing (413) as soon as more than ``max_bytes`` came:
    a chunked body announces no size, and the app's client_max_size is the
    largest of the routes' limits, not this route's. ``budget``: a body of
    unknown size, counted chunk by chunk as it arrives."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await content.readany():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"the body is larger than the limit of {max_bytes} bytes")
        if budget is not None:
            budget.take(request, len(chunk), size)
        chunks.append(chunk)
    return b"".join(chunks)


def body_limit(request: web.Request) -> int:
    """This route's largest body: MAX_BATCH_BYTES for a batch, else MAX_BODY_BYTES."""
    settings = request.app[SETTINGS]
    return settings.max_batch_bytes if request.path.endswith("/batch") else settings.max_body_bytes


def refusal(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    """An error answer that closes its connection once flushed, without reading the body."""
    response = error_response(status, code, detail, {**(headers or {}), **CLOSE})
    response.force_close()
    return response


def expectation_refusal(
    request: web.BaseRequest, limit: int, budget: BodyBudget | None = None, *, takes_body: bool = True
) -> web.Response | None:
    """The answer to an ``Expect`` header when its body must not be invited:
    417 for any expectation but 100-continue (the header is not echoed); 413
    for a declared body over ``limit``, or a chunked one to a route that
    takes no body; 503 when ``budget`` cannot hold it now. None: invite it."""
    expect = request.headers.get(hdrs.EXPECT)
    if expect is None:
        return None
    if expect.lower() != "100-continue":
        return _expectation_failed()
    declared = request.content_length
    if declared is None:
        if not takes_body and request.headers.get(hdrs.TRANSFER_ENCODING):
            return refusal(413, PayloadTooLarge.code, "this route takes no body")
        return None
    if declared > limit:
        return refusal(413, PayloadTooLarge.code, f"the body is {declared} bytes; the limit is {limit}")
    if budget is not None and not budget.fits(declared, declared):
        busy = budget.busy()
        return refusal(busy.status, busy.code, busy.detail, busy.headers)
    return None


def _expectation_failed() -> web.Response:
    return refusal(417, "expectation_failed", "the only expectation this server meets is 100-continue")


async def continue_within_limit(request: web.Request) -> web.StreamResponse | None:
    """``Expect`` on the ingest routes: ``100 Continue`` only for a body within
    the route's limit that the worker's budget can hold now; otherwise the
    refusal (expectation_refusal) at once, so the client never sends it."""
    refused = expectation_refusal(request, body_limit(request), request.app.get(BODY_BUDGET))
    if refused is not None:
        refused.headers[REQUEST_ID_HEADER] = request_id(request)  # answered before the handler and its wrapper
        return refused
    await _aiohttp_expect_handler(request)  # 100 Continue (to an HTTP/1.1 request)
    return None


async def refuse_unwanted_body(request: web.BaseRequest, router: AbstractRouter) -> web.Response | None:
    """Before the app, for a request with ``Expect`` or a declared body over
    NO_BODY_LIMIT. A route that takes no body (anything but a matched POST:
    GET, HEAD, the probes, /events, an unknown path or method) refuses a
    body over NO_BODY_LIMIT (413) rather than invite it with ``100 Continue``
    or linger reading it; any route refuses an unknown expectation (417).
    None: on to the app (an ingest route answers ``100-continue`` itself, by
    its own limit and the budget)."""
    expect = request.headers.get(hdrs.EXPECT)
    if expect is not None and expect.lower() != "100-continue":
        return _expectation_failed()
    match = await router.resolve(request)  # type: ignore[arg-type]
    if request.method == hdrs.METH_POST and match.http_exception is None and match.route.name != UNMATCHED_NAME:
        return None  # the service's POST routes (not the one for what no route matched) invite by their own limit
    refused = expectation_refusal(request, NO_BODY_LIMIT, takes_body=False)
    if refused is None and (request.content_length or 0) > NO_BODY_LIMIT:
        refused = refusal(413, PayloadTooLarge.code, f"this route takes no body over {NO_BODY_LIMIT} bytes")
    return refused
