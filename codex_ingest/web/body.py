"""Reading a request's body within MAX_BODY_BYTES and BODY_READ_TIMEOUT."""

from __future__ import annotations

import asyncio

from aiohttp import web

from codex_ingest.errors import PayloadTooLarge, RequestTimeout


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
