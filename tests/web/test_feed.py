"""GET /events without ``tenant``: the combined feed. A token scoped ``*``
reads every tenant's events, a token scoped to some tenants exactly theirs,
in one delivery order (the global ``ORDER BY xact, id``, restricted to the
token's tenants), with cursors of its own, ``source=``, the byte cap,
waiting at the head, and the 410 behind retention.

Commit order across tenants, concurrency and the horizon are
tests/storage/test_feed_order.py's."""

from __future__ import annotations

import asyncio
import base64
from urllib.parse import urlencode

import asyncpg
import pytest

from codex_ingest.settings import ReadToken
from codex_ingest.storage import retention
from codex_ingest.storage.delivery import Cursor
from codex_ingest.storage.queries import load_queries
from tests.helpers import headers, in_background, readers_waiting, until

ALL = "feed-token-all-tenants-0123456789"
AB = "feed-token-shop-a-and-b-0123456789"
C = "feed-token-shop-c-only-0123456789"
NOBODY = "feed-token-shop-z-only-0123456789"  # scoped to a tenant that has no events
SCOPES: dict[str, frozenset[str] | None] = {
    ALL: None, AB: frozenset({"shop-a", "shop-b"}), C: frozenset({"shop-c"}), NOBODY: frozenset({"shop-z"}),
}
TOKENS = tuple(ReadToken(token, tenants) for token, tenants in SCOPES.items())
# A token of each kind: every tenant (sql/read.sql's read_feed), some tenants (read_feed_of).
KINDS = pytest.mark.parametrize("token", [ALL, AB], ids=["token-all", "token-scoped"])


@pytest.fixture
async def reader(make_client):
    return await make_client(api_tokens=TOKENS)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def body_of(size: int, n: int) -> bytes:
    """A JSON object of exactly ``size`` bytes, different for each ``n``."""
    head = b'{"n":%d,"p":"' % n
    return head + b"x" * (size - len(head) - 2) + b'"}'


async def post(client, n: int, tenant: str, source: str = "orders", data: bytes | None = None) -> int:
    data = data if data is not None else b'{"type":"order.created","n":%d}' % n
    resp = await client.post(f"/pos/{source}/ingest", data=data, headers=headers(data, tenant=tenant))
    assert resp.status == 201, await resp.text()
    return (await resp.json())["event_id"]


async def get(client, token: str, **params):
    return await client.get("/events?" + urlencode(params), headers=bearer(token))


async def feed(client, token: str, **params) -> dict:
    """One page of the combined feed (no ``tenant``)."""
    resp = await get(client, token, **params)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    return await resp.json()


async def pages(client, token: str, **params) -> list[list[int]]:
    """Every page of the token's feed from the start, following next_cursor, as lists of event ids."""
    found: list[list[int]] = []
    cursor = None
    for _ in range(200):
        page = await feed(client, token, **params, **({"after": cursor} if cursor else {}))
        if not page["events"]:
            return found
        found.append([e["event_id"] for e in page["events"]])
        cursor = page["next_cursor"]
    raise AssertionError("more than 200 pages")


async def drain(client, token: str, **params) -> list[dict]:
    """Every event of the token's feed from the start, page by page."""
    events: list[dict] = []
    cursor = None
    for _ in range(200):
        page = await feed(client, token, **params, **({"after": cursor} if cursor else {}))
        if not page["events"]:
            return events
        events += page["events"]
        cursor = page["next_cursor"]
    raise AssertionError("more than 200 pages")


async def delivery_order(db: asyncpg.Connection, token: str, source: str | None = None) -> list[int]:
    """What the token's feed must deliver: every stored event, ORDER BY xact, id, of the token's tenants."""
    scope = SCOPES[token]
    rows = await db.fetch("SELECT id, tenant_id, source FROM events ORDER BY xact, id")
    return [r["id"] for r in rows if (scope is None or r["tenant_id"] in scope) and source in (None, r["source"])]


async def post_interleaved(client, count: int, sources: tuple[str, ...] = ("orders",)) -> list[int]:
    """``count`` events, tenants shop-a, shop-c, shop-b, shop-a, ... and sources in turn; their ids."""
    tenants = ("shop-a", "shop-c", "shop-b")
    return [await post(client, n, tenants[n % 3], sources[n % len(sources)]) for n in range(count)]


# -- whose events ------------------------------------------------------------------------------


async def test_a_star_token_reads_every_tenant_and_a_scoped_token_exactly_its_own_in_the_global_order(
        reader, db) -> None:
    ids = await post_interleaved(reader, 10)
    tenant_of = {r["id"]: r["tenant_id"] for r in await db.fetch("SELECT id, tenant_id FROM events")}
    everything = await delivery_order(db, ALL)
    assert sorted(everything) == sorted(ids)

    for token in (ALL, AB, C):
        events = await drain(reader, token, limit=2)
        read = [e["event_id"] for e in events]
        assert read == await delivery_order(db, token), token
        assert [e["tenant_id"] for e in events] == [tenant_of[i] for i in read]
        # The global order restricted to the token's tenants: nothing of another tenant, nothing missing.
        assert read == [i for i in everything if SCOPES[token] is None or tenant_of[i] in SCOPES[token]], token
    assert {e["tenant_id"] for e in await drain(reader, ALL)} == {"shop-a", "shop-b", "shop-c"}
    assert {e["tenant_id"] for e in await drain(reader, AB)} == {"shop-a", "shop-b"}


async def test_a_feed_event_has_the_read_shape_and_its_tenant(reader, db) -> None:
    data = b'{"type":"order.created","n":"shape"}'
    event_id = await post(reader, 0, "shop-b", data=data)
    [event] = (await feed(reader, ALL))["events"]
    assert set(event) == {"event_id", "tenant_id", "source", "idempotency_key", "received_at", "content_type", "headers",
                          "body_base64"}
    assert (event["event_id"], event["tenant_id"], event["source"]) == (event_id, "shop-b", "orders")
    assert base64.b64decode(event["body_base64"]) == data


async def test_a_token_scoped_to_tenants_without_events_reads_an_empty_feed_with_a_cursor(reader, db) -> None:
    await post_interleaved(reader, 3)
    page = await feed(reader, NOBODY)
    assert page["events"] == [] and page["next_cursor"]
    again = await feed(reader, NOBODY, after=page["next_cursor"])
    # The same position, stamped by this read (Cursor compares positions).
    assert again["events"] == [] and Cursor.decode(again["next_cursor"], feed=True) == Cursor.decode(page["next_cursor"], feed=True)


async def test_the_feed_without_a_known_token_is_401(reader) -> None:
    for authorization in ({}, bearer("nope-not-a-token-at-all")):
        resp = await reader.get("/events", headers=authorization)
        assert resp.status == 401
        assert (await resp.json())["error"] == "unauthorized"


@pytest.mark.parametrize("tenant", ["", "*"])
async def test_a_tenant_parameter_that_is_not_a_tenant_name_is_400_not_the_feed(reader, db, tenant: str) -> None:
    await post(reader, 0, "shop-a")
    resp = await get(reader, ALL, tenant=tenant)
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_tenant"


async def test_delivery_order_across_tenants_is_numeric_when_transaction_ids_gain_a_digit(reader, db) -> None:
    # Two tenants' rows whose id order is the reverse of their (xact, id) order, with
    # xacts whose text sorts the other way ('100' < '99'): the feed goes by the numbers.
    for tenant, key, xact in (("shop-a", "k-late", "100"), ("shop-b", "k-early", "99")):
        await db.execute(
            "INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, xact)"
            " VALUES ($1, 'orders', $2, $3, '{}', $4::text::xid8)", tenant, key, b"\x00" * 32, xact)
    for token in (ALL, AB):
        events = await drain(reader, token, limit=1)
        assert [(e["tenant_id"], e["idempotency_key"]) for e in events] == [("shop-b", "k-early"), ("shop-a", "k-late")]


# -- cursors of its own -------------------------------------------------------------------------


@KINDS
async def test_a_feed_cursor_is_refused_by_a_tenant_read_and_a_tenant_cursor_by_the_feed(reader, db, token) -> None:
    empty_feed_cursor = (await feed(reader, token))["next_cursor"]
    empty_tenant_cursor = (await feed(reader, token, tenant="shop-a"))["next_cursor"]
    await post_interleaved(reader, 4)
    feed_cursor = (await feed(reader, token, limit=2))["next_cursor"]
    tenant_cursor = (await feed(reader, token, tenant="shop-a", limit=1))["next_cursor"]
    assert feed_cursor != tenant_cursor

    for cursor in (feed_cursor, empty_feed_cursor):
        resp = await get(reader, token, tenant="shop-a", after=cursor)
        assert resp.status == 400, await resp.text()
        assert (await resp.json())["error"] == "invalid_cursor"
    for cursor in (tenant_cursor, empty_tenant_cursor):
        resp = await get(reader, token, after=cursor)
        assert resp.status == 400, await resp.text()
        assert (await resp.json())["error"] == "invalid_cursor"
    resp = await get(reader, token, after="not-a-cursor")
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_cursor"

    # Each kind continues its own read.
    assert (await feed(reader, token, after=feed_cursor))["events"]
    assert [e["tenant_id"] for e in (await feed(reader, token, tenant="shop-a", after=tenant_cursor))["events"]] == \
        ["shop-a"]


# -- source= --------------------------------------------------------------------------------------


@KINDS
async def test_source_filters_the_feed_and_its_cursor_goes_on_within_it(reader, db, token) -> None:
    await post_interleaved(reader, 12, sources=("orders", "orders", "refunds", "orders"))
    expected = await delivery_order(db, token, source="refunds")
    assert len(expected) >= 2, "the filter must keep several events, of more than one tenant where the token reads them"
    events = await drain(reader, token, source="refunds", limit=1)
    assert [e["event_id"] for e in events] == expected
    assert {e["source"] for e in events} == {"refunds"}
    assert [e["event_id"] for e in await drain(reader, token, source="orders", limit=2)] == \
        await delivery_order(db, token, source="orders")


# -- the byte cap ----------------------------------------------------------------------------------


@KINDS
async def test_a_feed_page_ends_before_the_event_that_would_pass_read_page_max_bytes(make_client, db, token) -> None:
    client = await make_client(api_tokens=TOKENS, read_page_max_bytes=2500)
    tenants = ("shop-a", "shop-c", "shop-b")
    for n in range(10):
        await post(client, n, tenants[n % 3], data=body_of(1000, n))
    expected = await delivery_order(db, token)
    # 2 x 1000 bytes fit in 2500, a third would not: pages of two, whatever the limit, and no skip.
    assert await pages(client, token, limit=1000) == [expected[i:i + 2] for i in range(0, len(expected), 2)]
    # The limit still applies under the cap.
    assert await pages(client, token, limit=1) == [[i] for i in expected]


@KINDS
async def test_an_event_larger_than_the_cap_comes_alone_in_the_feed(make_client, db, token) -> None:
    client = await make_client(api_tokens=TOKENS, read_page_max_bytes=1500)
    small = await post(client, 0, "shop-a", data=body_of(500, 0))
    large = await post(client, 1, "shop-b", data=body_of(4000, 1))
    small_too = await post(client, 2, "shop-a", data=body_of(500, 2))
    assert await pages(client, token, limit=1000) == [[small], [large], [small_too]]


# -- waiting at the head ---------------------------------------------------------------------------


async def test_a_star_feed_reader_waiting_at_the_head_is_woken_by_an_event_of_any_tenant(reader, db) -> None:
    await post(reader, 0, "shop-a")
    cursor = (await feed(reader, ALL))["next_cursor"]
    loop = asyncio.get_running_loop()
    async with in_background(feed(reader, ALL, after=cursor, wait=30)) as waiting:
        await until(lambda: readers_waiting(reader), "the feed reader to wait at the head")
        assert not waiting.done()
        event_id = await post(reader, 1, "shop-new")  # a tenant never seen before
        acknowledged = loop.time()
        page = await waiting
    # Woken by the write, not at its 30 s timeout: the bound sits far from both.
    assert loop.time() - acknowledged < 15
    assert [(e["event_id"], e["tenant_id"]) for e in page["events"]] == [(event_id, "shop-new")]


async def test_a_scoped_feed_reader_waits_past_other_tenants_events_and_is_woken_by_its_own(reader, db) -> None:
    cursor = (await feed(reader, AB))["next_cursor"]
    loop = asyncio.get_running_loop()
    notified = asyncio.Event()
    await db.add_listener("codex_events", lambda *_: notified.set())
    async with in_background(feed(reader, AB, after=cursor, wait=30)) as waiting:
        await until(lambda: readers_waiting(reader), "the feed reader to wait at the head")
        await post(reader, 1, "shop-c")  # not the token's: it wakes the reader, who reads nothing and waits on
        await until(notified.is_set, "the NOTIFY that follows shop-c's write")
        assert not waiting.done()
        event_id = await post(reader, 2, "shop-b")
        acknowledged = loop.time()
        page = await waiting
    assert loop.time() - acknowledged < 15
    # Only its own tenant's event: shop-c's, written first, never appears.
    assert [(e["event_id"], e["tenant_id"]) for e in page["events"]] == [(event_id, "shop-b")]


async def test_a_feed_wait_with_nothing_new_answers_empty_with_the_same_feed_cursor(reader, db) -> None:
    await post(reader, 0, "shop-a")
    cursor = (await feed(reader, ALL))["next_cursor"]
    loop = asyncio.get_running_loop()
    started = loop.time()
    page = await feed(reader, ALL, after=cursor, wait=1)
    # It waited its time out (the clock started before the request: it cannot read short).
    assert loop.time() - started >= 1.0
    assert page["events"] == [] and Cursor.decode(page["next_cursor"], feed=True) == Cursor.decode(cursor, feed=True)
    # Still a feed cursor: the feed goes on from it, a tenant read refuses it.
    assert (await feed(reader, ALL, after=page["next_cursor"]))["events"] == []
    assert (await get(reader, ALL, tenant="shop-a", after=page["next_cursor"])).status == 400


# -- retention and 410 -----------------------------------------------------------------------------


async def purge_ids(db: asyncpg.Connection, ids: list[int]) -> int:
    """Age these events past a day and run retention's purge: the number it deleted."""
    await db.execute("UPDATE events SET received_at = now() - interval '2 days' WHERE id = ANY($1::bigint[])", ids)
    return await retention.purge(db, load_queries(), older_than=86400)


@KINDS
async def test_a_feed_cursor_behind_an_event_purged_of_any_of_its_tenants_is_410(reader, db, token) -> None:
    a1 = await post(reader, 1, "shop-a")
    b1 = await post(reader, 2, "shop-b")
    a2 = await post(reader, 3, "shop-a")
    first = await feed(reader, token, limit=1)
    assert [e["event_id"] for e in first["events"]] == [a1]
    # shop-a's horizon lands on the cursor itself (not behind it); shop-b's after it: b1
    # was deleted unread, so the feed must not go on as if nothing happened.
    assert await purge_ids(db, [a1, b1]) == 2
    resp = await get(reader, token, after=first["next_cursor"])
    assert resp.status == 410
    assert (await resp.json())["error"] == "cursor_expired"
    # Reading from the start is allowed: it begins at the oldest retained event.
    assert [e["event_id"] for e in (await feed(reader, token))["events"]] == [a2]


@KINDS
async def test_a_feed_cursor_at_or_after_the_purge_horizon_reads_on(reader, db, token) -> None:
    ids = [await post(reader, n, ("shop-a", "shop-b")[n % 2]) for n in range(5)]
    upto_two = await feed(reader, token, limit=2)
    assert [e["event_id"] for e in upto_two["events"]] == ids[:2]
    assert await purge_ids(db, ids[:2]) == 2
    assert [e["event_id"] for e in (await feed(reader, token, after=upto_two["next_cursor"]))["events"]] == ids[2:]
    # And from a cursor past the horizon, too.
    upto_three = await feed(reader, token, limit=1)
    assert [e["event_id"] for e in (await feed(reader, token, after=upto_three["next_cursor"]))["events"]] == ids[3:]


async def test_a_scoped_feed_is_not_expired_by_the_purge_of_a_tenant_it_does_not_read(reader, db) -> None:
    a1 = await post(reader, 1, "shop-a")
    c1 = await post(reader, 2, "shop-c")  # not AB's
    a2 = await post(reader, 3, "shop-a")
    first = await feed(reader, AB, limit=1)
    assert [e["event_id"] for e in first["events"]] == [a1]
    everyone = await feed(reader, ALL, limit=1)
    assert [e["event_id"] for e in everyone["events"]] == [a1]
    assert await purge_ids(db, [c1]) == 1  # shop-c's horizon is now after both cursors
    assert [e["event_id"] for e in (await feed(reader, AB, after=first["next_cursor"]))["events"]] == [a2]
    # The same position is 410 for a feed that covers shop-c: its reader had not read c1, now gone.
    assert (await get(reader, ALL, after=everyone["next_cursor"])).status == 410
    assert (await get(reader, C, after=everyone["next_cursor"])).status == 410


async def test_a_reader_that_began_after_a_purge_is_never_expired_by_it(reader, db) -> None:
    # c1 is purged before the reader's first page: a fresh read starts after the purge and
    # never had c1 to miss. Its cursor, at a1, is below shop-c's horizon all the same.
    a1 = await post(reader, 1, "shop-a")
    c1 = await post(reader, 2, "shop-c")
    a2 = await post(reader, 3, "shop-a")
    c2 = await post(reader, 4, "shop-c")
    assert await purge_ids(db, [c1]) == 1
    first = await feed(reader, ALL, limit=1)
    assert [e["event_id"] for e in first["events"]] == [a1]
    following = await get(reader, ALL, after=first["next_cursor"])
    assert following.status == 200, await following.text()
    assert [e["event_id"] for e in (await following.json())["events"]] == [a2, c2]
    # A later purge that moves the same tenant's horizon past the cursor, over c2 the reader
    # had not read from it, expires it.
    assert await purge_ids(db, [c2]) == 1
    assert (await get(reader, ALL, after=first["next_cursor"])).status == 410


async def test_an_empty_first_read_after_everything_was_purged_is_not_expired_by_that_purge(reader, db) -> None:
    a1 = await post(reader, 1, "shop-a")
    assert await purge_ids(db, [a1]) == 1
    empty = await feed(reader, ALL)
    assert empty["events"] == []
    again = await get(reader, ALL, after=empty["next_cursor"])
    assert again.status == 200, await again.text()
    a2 = await post(reader, 2, "shop-a")
    assert [e["event_id"] for e in (await feed(reader, ALL, after=empty["next_cursor"]))["events"]] == [a2]
