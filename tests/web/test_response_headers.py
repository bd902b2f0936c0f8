"""What a security scan checks on every answer: no versions in Server,
nosniff everywhere, no-store on reads, and an oversized body announced with
``Expect: 100-continue`` refused at once instead of invited."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from codex_ingest.settings import ReadToken
from codex_ingest.web.app import create_app
from tests.helpers import headers
from tests.rawhttp import ServiceTestServer, build, exchange

LIMIT = 4096
TOKEN = "headers-test-token-0123456789"


@pytest.fixture
async def service(aiohttp_client, settings, db):
    """The app served as ``serve`` serves it (its own connection handling), read API on."""
    app = create_app(replace(settings, max_body_bytes=LIMIT, api_tokens=(ReadToken(TOKEN, None),)))
    return await aiohttp_client(ServiceTestServer(app))


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/healthz", 200),
    ("GET", "/readyz", 200),
    ("GET", "/metrics", 200),
    ("GET", "/openapi.json", 200),
    ("GET", "/nowhere", 404),
    ("GET", "/events?tenant=t", 401),
    ("GET", "/pos/square/ingest", 405),
    ("POST", "/pos/square/ingest", 400),
])
async def test_every_answer_names_no_versions_and_forbids_sniffing(service, method, path, status) -> None:
    resp = await service.request(method, path)
    assert resp.status == status
    assert resp.headers["Server"] == "codex-ingest"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_an_ingest_answer_and_an_unparsable_request_carry_them_too(service, db) -> None:
    body = b'{"n":1}'
    resp = await service.post("/pos/square/ingest", data=body, headers=headers(body))
    assert resp.status == 201
    assert (resp.headers["Server"], resp.headers["X-Content-Type-Options"]) == ("codex-ingest", "nosniff")
    raw = await exchange(service.host, service.port, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert raw is not None and raw.status == 400
    assert raw.headers["server"] == "codex-ingest" and raw.headers["x-content-type-options"] == "nosniff"


async def test_reads_are_not_cacheable(service, db) -> None:
    resp = await service.get("/events?tenant=t", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"


async def test_an_oversized_body_announced_with_expect_100_continue_is_413_at_once(service, db) -> None:
    head = build(body=b"", content_length=LIMIT + 1, headers=[("Expect", "100-continue")])
    reader, writer = await asyncio.open_connection(service.host, service.port)
    try:
        writer.write(head)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        rest = await asyncio.wait_for(reader.read(), 5)  # the server closes: the body was never invited
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 413"), status_line
    assert b"100 Continue" not in status_line + rest
    assert b'"error":"payload_too_large"' in rest
    assert await db.fetchval("SELECT count(*) FROM events") == 0


async def test_a_body_within_the_limit_is_still_invited_with_100_continue(service, db) -> None:
    body = b'{"n":"continue"}'
    head = build(body=body, headers=[("Expect", "100-continue")])
    head, _, _ = head.partition(b"\r\n\r\n")
    reader, writer = await asyncio.open_connection(service.host, service.port)
    try:
        writer.write(head + b"\r\n\r\n")
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        writer.write(body)
        await writer.drain()
        final = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    assert final.startswith(b"HTTP/1.1 201"), final
    assert await db.fetchval("SELECT count(*) FROM events") == 1
