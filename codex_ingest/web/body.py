"""Reading a request's body within MAX_BODY_BYTES and BODY_READ_TIMEOUT, and
answering ``Expect: 100-continue`` by the same limit."""

from __future__ import annotations

import asyncio

from aiohttp import StreamReader, web
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
    content = request.content
    if content.is_eof() and declared is not None:
        # Usually the whole body came with the headers: its size is known and
        # within the limit, so take the buffered bytes as they are, without a
        # timer or request.read()'s copying loop.
        return content.read_nowait()
    try:
        async with asyncio.timeout(timeout):
            return await _read_within(content, max_bytes)
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout:g} s") from None


async def _read_within(content: StreamReader, max_bytes: int) -> bytes:
    """Read to the end, refusing (413) as soon as more than ``max_bytes`` came:
    a chunked body announces no size, and the app's client_max_size is the
    largest of the routes' limits, not this route's."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await content.readany():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"the body is larger than the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def body_limit(request: web.Request) -> int:
    """This route's largest body: MAX_BATCH_BYTES for a batch, else MAX_BODY_BYTES."""
    settings = request.app[SETTINGS]
    return settings.max_batch_bytes if request.path.endswith("/batch") else settings.max_body_bytes


async def continue_within_limit(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` on the ingest routes: invite the body only when
    its declared size is within the route's limit. A larger one is answered
    413 at once, without ``100 Continue``, so the client never sends it; the
    connection is then closed, since the body was not read."""
    limit = body_limit(request)
    declared = request.content_length
    if declared is not None and declared > limit and request.headers.get("Expect", "").lower() == "100-continue":
        response = error_response(413, PayloadTooLarge.code, f"the body is {declared} bytes; the limit is {limit}")
        response.force_close()
        return response
    # Otherwise aiohttp's own handling: 100 Continue, or 417 for an unknown expectation.
    await _aiohttp_expect_handler(request)
    return None
