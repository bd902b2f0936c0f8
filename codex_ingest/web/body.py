"""Reading a request's body within MAX_BODY_BYTES and BODY_READ_TIMEOUT, and
answering ``Expect: 100-continue`` by the same limit."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.web_urldispatcher import _default_expect_handler as _aiohttp_expect_handler

from codex_ingest.errors import PayloadTooLarge, RequestTimeout
from codex_ingest.web.appkeys import SETTINGS
from codex_ingest.web.responses import error_response


async def read_body(request: web.Request, max_bytes: int, timeout: float | None = None) -> bytes:
    """The whole body: 413 past ``max_bytes`` (declared or streamed), 408 when
    it has not all arrived ``timeout`` seconds after the headers."""
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {max_bytes}")
    try:
        # client_max_size on the Application enforces the same limit while
        # reading, which also covers chunked bodies with no Content-Length.
        content = request.content
        if content.is_eof():
            # Usually the whole body came with the headers: no timer needed.
            if declared is not None:
                # Its size is known and within the limit: take the buffered
                # bytes as they are, without request.read()'s copying loop.
                return content.read_nowait()
            return await request.read()
        if timeout is None:
            return await request.read()
        async with asyncio.timeout(timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"the body is larger than the limit of {max_bytes} bytes") from None
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout:g} s") from None


async def continue_within_limit(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` on the ingest route: invite the body only when
    its declared size is within MAX_BODY_BYTES. A larger one is answered 413
    at once, without ``100 Continue``, so the client never sends it; the
    connection is then closed, since the body was not read."""
    limit = request.app[SETTINGS].max_body_bytes
    declared = request.content_length
    if declared is not None and declared > limit and request.headers.get("Expect", "").lower() == "100-continue":
        response = error_response(413, PayloadTooLarge.code, f"the body is {declared} bytes; the limit is {limit}")
        response.force_close()
        return response
    # Otherwise aiohttp's own handling: 100 Continue, or 417 for an unknown expectation.
    await _aiohttp_expect_handler(request)
    return None
