"""The console's pages through the real app and real PostgreSQL (aiohttp's test
client): sign-in and sign-out, what a session keeps, the security headers on
every answer, a cross-site POST refused, tenant scoping, hostile payloads
escaped, search, the download, and paging that never repeats or skips an
event while new ones arrive."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from html import unescape

import asyncpg
import pytest

from codex_ingest.settings import ReadToken
from codex_ingest.web.app import create_app
from codex_ingest.web.console.guard import SECURITY_HEADERS
from tests.helpers import headers

OPERATOR = "operator-token-every-tenant-0123456789"
SCOPED = "reader-token-shop-a-only-0123456789"
TOKENS = (ReadToken(OPERATOR, None), ReadToken(SCOPED, frozenset({"shop-a"})))
HOSTILE = b"<script>alert(1)</script><img src=x onerror=alert(2)>"


@pytest.fixture
async def console(aiohttp_client, settings):
    return await aiohttp_client(create_app(replace(settings, api_tokens=TOKENS)))


async def sign_in(client, token: str = OPERATOR) -> str:
    resp = await client.post("/console/signin", data={"token": token}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/console/events", await resp.text()
    return resp.cookies["codex_console"].value


async def post(client, n: int, tenant: str = "shop-a", body: bytes | None = None) -> int:
    body = body if body is not None else b'{"n":%d}' % n
    resp = await client.post("/pos/orders/ingest", data=body,
                             headers=headers(body, tenant=tenant, **{"Idempotency-Key": f"k-{n}"}))
    assert resp.status == 201, await resp.text()
    return (await resp.json())["event_id"]


def event_ids(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<a href="/console/events/(\d+)">', html)]


async def test_pages_need_a_session_and_sign_in_takes_a_read_token_once(console, db) -> None:
    resp = await console.get("/console/events", allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (303, "/console/signin")

    wrong = await console.post("/console/signin", data={"token": "not-a-token"}, allow_redirects=False)
    assert wrong.status == 401 and "not a read token" in await wrong.text()
    assert "codex_console" not in wrong.cookies

    resp = await console.post("/console/signin", data={"token": OPERATOR}, allow_redirects=False)
    assert resp.status == 303
    cookie = resp.headers["Set-Cookie"]
    session = resp.cookies["codex_console"].value
    for part in ("HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age=28800"):
        assert part in cookie, cookie
    assert "Secure" not in cookie  # served over http here
    assert OPERATOR not in resp.headers["Location"] and OPERATOR not in cookie

    # The database keeps digests: neither the session nor the token in the clear.
    row = await db.fetchrow("SELECT id_sha256, token_sha256, expires_at - created_at AS life FROM console_sessions")
    assert bytes(row["id_sha256"]) == hashlib.sha256(session.encode()).digest()
    assert bytes(row["token_sha256"]) == hashlib.sha256(OPERATOR.encode()).digest()
    assert row["life"].total_seconds() == pytest.approx(8 * 3600, abs=5)

    page = await console.get("/console/events")
    assert page.status == 200 and OPERATOR not in await page.text()

    out = await console.post("/console/signout", allow_redirects=False)
    assert (out.status, out.headers["Location"]) == (303, "/console/signin")
    assert await db.fetchval("SELECT count(*) FROM console_sessions") == 0
    console.session.cookie_jar.update_cookies({"codex_console": session})  # the old cookie, replayed
    again = await console.get("/console/events", allow_redirects=False)
    assert again.status == 303


@pytest.mark.parametrize("path", ["/console/signin", "/console/events", "/console/events/1"])
async def test_every_answer_carries_the_security_headers(console, db, path: str) -> None:
    await sign_in(console)
    await post(console, 1)
    resp = await console.get(path, allow_redirects=False)
    assert resp.status in (200, 303)
    for name, value in SECURITY_HEADERS.items():
        assert resp.headers.get(name) == value, (name, resp.headers.get(name))
    assert "'unsafe-inline'" not in resp.headers["Content-Security-Policy"]
    assert "script-src" not in resp.headers["Content-Security-Policy"]  # default-src 'none': no script at all


@pytest.mark.parametrize("cross", [{"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                                   {"Origin": "http://evil.example"}])
async def test_a_cross_site_post_is_refused_and_changes_nothing(console, db, cross: dict[str, str]) -> None:
    resp = await console.post("/console/signin", data={"token": OPERATOR}, headers=cross, allow_redirects=False)
    assert resp.status == 403 and (await resp.json())["error"] == "cross_site"
    assert resp.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    assert await db.fetchval("SELECT count(*) FROM console_sessions") == 0


async def test_a_same_origin_post_is_taken(console, db) -> None:
    origin = f"http://{console.server.host}:{console.server.port}"
    for same in ({"Sec-Fetch-Site": "same-origin"}, {"Origin": origin}):
        resp = await console.post("/console/signin", data={"token": OPERATOR}, headers=same, allow_redirects=False)
        assert resp.status == 303, (same, await resp.text())


async def test_behind_a_proxy_that_ended_tls_the_cookie_is_secure_and_the_https_origin_is_ours(console, db) -> None:
    """deploy/nginx ends TLS and says so in X-Forwarded-Proto: the session cookie must be Secure
    there, and the browser's Origin (https://host) is the console's own."""
    host = f"{console.server.host}:{console.server.port}"
    behind = {"X-Forwarded-Proto": "https", "Origin": f"https://{host}"}
    resp = await console.post("/console/signin", data={"token": OPERATOR}, headers=behind, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    assert "Secure" in resp.headers["Set-Cookie"]
    # Over https, an http page of the same host is another origin.
    downgraded = {"X-Forwarded-Proto": "https", "Origin": f"http://{host}"}
    resp = await console.post("/console/signin", data={"token": OPERATOR}, headers=downgraded, allow_redirects=False)
    assert resp.status == 403


async def test_a_scoped_token_sees_only_its_tenants(console, db) -> None:
    mine, theirs = await post(console, 1, "shop-a"), await post(console, 2, "shop-b")
    await sign_in(console, SCOPED)
    listed = event_ids(await (await console.get("/console/events")).text())
    assert listed == [mine]
    assert event_ids(await (await console.get("/console/events?tenant=shop-b")).text()) == []
    for path in (f"/console/events/{theirs}", f"/console/events/{theirs}/body"):
        assert (await console.get(path)).status == 404
    assert (await console.get(f"/console/events/{mine}")).status == 200


async def test_a_hostile_body_is_shown_as_text_and_downloaded_whole(console, db) -> None:
    await sign_in(console)
    event_id = await post(console, 1, body=b'{"note": "' + HOSTILE + b'"}')
    # Not JSON, not UTF-8 (a provider's form post, say): stored as bytes like any body.
    raw_id = await db.fetchval(
        "INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, content_type)"
        " VALUES ('shop-a', 'orders', 'raw', sha256($1), $1, 'application/octet-stream') RETURNING id",
        b"\xff\xfe<b>not utf-8</b>")
    html = await (await console.get(f"/console/events/{event_id}")).text()
    assert "<script>alert(1)" not in html and "<img src=x" not in html
    assert HOSTILE.decode() in unescape(html)  # the text is all there, escaped
    other = await (await console.get(f"/console/events/{raw_id}")).text()
    assert "Not UTF-8" in other and "\\xff\\xfe" in other and "<b>not" not in other

    download = await console.get(f"/console/events/{event_id}/body")
    assert download.headers["Content-Type"] == "application/octet-stream"
    assert download.headers["Content-Disposition"] == f'attachment; filename="event-{event_id}.bin"'
    assert await download.read() == b'{"note": "' + HOSTILE + b'"}'


async def test_an_events_cursor_continues_the_read_api_just_after_it(console, db, database_url) -> None:
    ids = [await post(console, n) for n in range(3)]
    await sign_in(console)
    html = await (await console.get(f"/console/events/{ids[1]}")).text()
    tenant_cursor = re.search(r'<code id="cursor">([^<]+)</code>', html).group(1)
    feed_cursor = re.search(r'<code id="feed-cursor">([^<]+)</code>', html).group(1)
    bearer = {"Authorization": f"Bearer {OPERATOR}"}
    read = await (await console.get(f"/events?tenant=shop-a&after={tenant_cursor}", headers=bearer)).json()
    assert [e["event_id"] for e in read["events"]] == ids[2:]
    feed = await (await console.get(f"/events?after={feed_cursor}", headers=bearer)).json()
    assert [e["event_id"] for e in feed["events"]] == ids[2:]

    # Behind an older transaction still open, an event is above the read horizon: no cursor yet
    # (one could skip that transaction's events when it commits).
    older = await asyncpg.connect(database_url)
    try:
        async with older.transaction():
            await older.execute("SELECT pg_current_xact_id()")
            late = await post(console, 9)
            html = await (await console.get(f"/console/events/{late}")).text()
            assert 'id="cursor"' not in html and "none yet" in html
    finally:
        await older.close()


async def test_search_finds_an_event_by_key_or_by_id(console, db) -> None:
    ids = [await post(console, n) for n in range(5)]
    await sign_in(console)
    assert event_ids(await (await console.get("/console/events?q=k-3")).text()) == [ids[3]]
    assert event_ids(await (await console.get(f"/console/events?q={ids[1]}")).text()) == [ids[1]]
    assert event_ids(await (await console.get("/console/events?q=no-such-key")).text()) == []


async def test_paging_newest_first_never_repeats_or_skips_while_new_events_arrive(console, db) -> None:
    first = [await post(console, n, tenant=f"shop-{n % 3}") for n in range(120)]
    await sign_in(console)
    seen: list[int] = []
    path = "/console/events"
    arrived: list[int] = []
    while True:
        html = await (await console.get(path)).text()
        seen += event_ids(html)
        arrived.append(await post(console, 1000 + len(arrived)))  # a new one between pages
        older = re.search(r'<a id="older" href="([^"]+)">', html)
        if older is None:
            break
        path = unescape(older.group(1))
    assert len(seen) == len(set(seen)) == 120
    assert seen == sorted(first, reverse=True)  # one transaction each here: newest first is id order
    assert not set(arrived) & set(seen)  # what came after the first page is above it, for the next look
