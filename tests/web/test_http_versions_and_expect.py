"""HTTP/1.0 and 1.1 only, and ``Expect`` answered by every route's limit,
as raw bytes to a real ``serve``.

A request line without a version (which llhttp reads as HTTP/0.9) is 400,
and another version (HTTP/2.0) is 505: answered as HTTP/1.1, in the JSON
error shape, nothing stored, the connection closed without reading the
body. ``Expect`` other than ``100-continue`` is 417 ``expectation_failed``
without echoing it. A route that takes no body (the probes, /metrics,
/openapi.json, /events, an unknown path or method) refuses a declared body
over 64 KiB with 413 before any ``100 Continue``; no route invites a body
over its own limit.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import READ_TOKEN, sign
from tests.live import Live

GIB = 1024**3
BODY = b'{"type":"order.created","id":"versions-1"}'
# Long enough for an answer to come and the connection to close; the
# server's own deadlines (HEADER_READ_TIMEOUT, BODY_READ_TIMEOUT of the live
# serve: 5 s) are what an open connection would otherwise wait for.
ANSWER_WITHIN = 15.0


def signed_head(request_line: bytes, body: bytes = BODY, extra: bytes = b"") -> bytes:
    return (request_line + b"\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Tenant-Id: versions\r\n"
            b"X-Signature: " + sign(body).encode() + b"\r\nContent-Length: %d\r\n" % len(body) + extra + b"\r\n")


async def talk(live: Live, data: bytes, *, then: bytes | None = None) -> tuple[bytes, bool]:
    """Send ``data`` and read until the server closes: (everything it sent,
    whether it closed within ANSWER_WITHIN). ``then``: sent once an interim
    ``100 Continue`` arrives (a client that waits for the invitation)."""
    reader, writer = await asyncio.open_connection(live.host, live.port)
    received = b""
    closed = False
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(ANSWER_WITHIN):
            while chunk := await reader.read(65536):
                received += chunk
                if then is not None and received.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
                    writer.write(then)
                    then = None
            closed = True
    except TimeoutError:
        pass
    except ConnectionError:
        closed = True
    finally:
        writer.close()
    return received, closed


def json_error(received: bytes, status: int, code: str) -> None:
    """``received`` is one HTTP/1.1 answer ``status`` with the JSON error ``code``."""
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), received[:200]
    assert b"\r\ncontent-type: application/json" in head.lower(), head
    assert b"\r\nx-request-id: " in head.lower(), head  # as every answer, though the app never saw it
    assert body.startswith(b'{"error":"%s","detail":"' % code.encode()), body


# --- versions ---------------------------------------------------------------------


@pytest.mark.parametrize(("line", "status", "code"), [
    (b"POST /pos/versions/ingest", 400, "bad_request"),           # no version: llhttp's HTTP/0.9
    (b"POST /pos/versions/ingest HTTP/0.9", 400, "bad_request"),
    (b"POST /pos/versions/ingest HTTP/2.0", 505, "http_version_not_supported"),
], ids=["no-version", "http-0.9", "http-2.0"])
async def test_a_signed_event_in_an_unspoken_version_is_refused_and_not_stored(live: Live, db, line, status, code) -> None:
    received, closed = await talk(live, signed_head(line) + BODY)
    json_error(received, status, code)
    assert closed
    assert await db.fetchval("SELECT count(*) FROM events WHERE tenant_id = 'versions'") == 0


@pytest.mark.parametrize(("line", "status"), [
    (b"GET /healthz", 400), (b"GET /healthz HTTP/2.0", 505), (b"HEAD /healthz HTTP/2.0", 505),
    (b"GET /nowhere HTTP/2.0", 505),
], ids=["healthz-no-version", "healthz-http-2.0", "head-http-2.0", "unknown-path-http-2.0"])
async def test_a_probe_in_an_unspoken_version_is_refused_as_http_1_1(live: Live, line, status) -> None:
    received, closed = await talk(live, line + b"\r\nHost: 127.0.0.1\r\n\r\n")
    code = {400: "bad_request", 505: "http_version_not_supported"}[status]
    if line.startswith(b"HEAD"):
        assert received.startswith(b"HTTP/1.1 505 "), received  # a HEAD answer has no body
    else:
        json_error(received, status, code)
    assert closed


async def test_http_1_0_and_1_1_are_served_and_an_unspoken_one_on_the_same_connection_ends_it(live: Live, db) -> None:
    # The control: the versions spoken are served (HTTP/1.0 stored too) ...
    one_zero = BODY.replace(b"versions-1", b"versions-10")
    received, _ = await talk(live, signed_head(b"POST /pos/versions/ingest HTTP/1.0", one_zero) + one_zero)
    assert received.startswith(b"HTTP/1.0 201 "), received[:200]
    # ... and an HTTP/2.0 line pipelined after a good request is refused, not served.
    received, closed = await talk(live, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/2.0\r\nHost: x\r\n\r\n")
    first, _, rest = received.partition(b'{"status":"ok"}')
    assert first.startswith(b"HTTP/1.1 200 "), received
    json_error(rest, 505, "http_version_not_supported")
    assert closed
    assert await db.fetchval("SELECT count(*) FROM events WHERE tenant_id = 'versions'") == 1


# --- Expect -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/pos/versions/ingest", "/nowhere"])
async def test_an_unknown_expectation_is_417_json_without_echo(live: Live, db, path) -> None:
    expectation = b"<script>x-unknown-expectation</script>"
    if path.startswith("/pos/"):
        data = signed_head(b"POST %s HTTP/1.1" % path.encode(), extra=b"Expect: " + expectation + b"\r\n") + BODY
    else:
        data = b"GET %s HTTP/1.1\r\nHost: x\r\nExpect: %s\r\n\r\n" % (path.encode(), expectation)
    received, closed = await talk(live, data)
    json_error(received, 417, "expectation_failed")
    assert b"x-unknown-expectation" not in received
    assert closed
    assert await db.fetchval("SELECT count(*) FROM events") == 0


NO_BODY_ROUTES = [
    ("GET", "/healthz"), ("HEAD", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/openapi.json"),
    ("GET", "/events?tenant=t"), ("GET", "/nowhere"), ("POST", "/nowhere"), ("POST", "/healthz"),
    ("PUT", "/pos/versions/ingest"),
]


@pytest.mark.parametrize(("method", "path"), NO_BODY_ROUTES, ids=[f"{m}-{p}" for m, p in NO_BODY_ROUTES])
async def test_a_route_without_a_body_refuses_a_gibibyte_before_inviting_it(live: Live, method, path) -> None:
    head = (b"%s %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % (method.encode(), path.encode(), READ_TOKEN.encode(), GIB))
    received, closed = await talk(live, head)
    assert b"100 Continue" not in received, received[:200]
    if method == "HEAD":
        assert received.startswith(b"HTTP/1.1 413 "), received[:200]
    else:
        json_error(received, 413, "payload_too_large")
    assert closed


async def test_a_route_without_a_body_refuses_a_chunked_one_and_a_large_one_sent_without_expect(live: Live) -> None:
    received, closed = await talk(
        live, b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert b"100 Continue" not in received
    json_error(received, 413, "payload_too_large")
    assert closed
    # Without Expect the client sends at once: refused on its headers and closed,
    # not read (aiohttp would answer 200 and then read up to 10 s of it).
    received, closed = await talk(live, b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % GIB
                                  + b"x" * 65536)
    json_error(received, 413, "payload_too_large")
    assert closed


async def test_a_small_body_is_still_invited_where_a_large_one_is_refused(live: Live, db) -> None:
    # 100 Continue for what fits: a probe with a small body, an event within MAX_BODY_BYTES.
    received, _ = await talk(live, b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n"
                             b"Connection: close\r\n\r\n", then=b"{}")
    assert received.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 "), received[:200]
    received, _ = await talk(live, signed_head(b"POST /pos/versions/ingest HTTP/1.1",
                                               extra=b"Expect: 100-continue\r\nConnection: close\r\n"), then=BODY)
    assert received.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 "), received[:200]
    # The same probe with a body over 64 KiB: refused before the invitation.
    received, closed = await talk(live, b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                                  b"Content-Length: 65537\r\n\r\n")
    json_error(received, 413, "payload_too_large")
    assert closed
    assert await db.fetchval("SELECT count(*) FROM events WHERE tenant_id = 'versions'") == 1

