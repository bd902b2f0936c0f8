"""The combined feed (GET /events without ``tenant``) never skips and never
repeats, across tenants, whatever the commit order.

As tests/storage/test_delivery_order.py does for one tenant's read: the
out-of-order commit is made on purpose. A transaction of the test's own holds
a key of shop-a uncommitted, so the service's insert of that key waits
holding an early id while later events of shop-a, shop-b and shop-c commit;
a feed reader continuing from its cursor gets the stalled event exactly
once, and a reader using ``id > last`` misses it, which shows the scenario
bites. Every test runs for a token scoped ``*`` (sql/read.sql's read_feed)
and for a token scoped to some tenants (read_feed_of): two statements, one
promise. What a feed reader must get is the global delivery order,
``ORDER BY xact, id``, restricted to its token's tenants.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import asyncpg
import pytest

from codex_ingest.settings import ReadToken
from codex_ingest.storage.delivery import Cursor
from codex_ingest.storage.queries import load_queries
from tests.db_faults import hold_key
from tests.helpers import headers, in_background

# The write path: batched and direct writes must each keep these promises.
pytestmark = pytest.mark.both_write_paths

ALL = "feed-order-token-all-0123456789"
SOME = "feed-order-token-some-0123456789"
COVERED = frozenset({"shop-a", "shop-b", "shop-d", "shop-e"})
SCOPES: dict[str, frozenset[str] | None] = {ALL: None, SOME: COVERED}
URL = "/pos/toast/ingest"


@pytest.fixture(params=[ALL, SOME], ids=["token-all", "token-scoped"])
def token(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def reader(make_client):
    # Two batches in flight: one may stall on the held key while the other commits the rest.
    return await make_client(api_tokens=(ReadToken(ALL, None), ReadToken(SOME, COVERED)), db_pool_max=4,
                             batch_max_in_flight=2)


def body(tenant: str, n: int) -> bytes:
    return b'{"guid":"%s-order-%d","eventType":"ORDER_UPDATED"}' % (tenant.encode(), n)


async def post(client, tenant: str, n: int):
    data = body(tenant, n)
    return await client.post(URL, data=data, headers=headers(data, tenant=tenant, **{"Idempotency-Key": f"k-{n}"}))


async def page(client, token: str, cursor: str | None, limit: int = 1000, wait: float = 0) -> tuple[list[dict], str]:
    """One page of the combined feed (no ``tenant``): its events and next_cursor."""
    params = {"limit": limit, "wait": wait, **({"after": cursor} if cursor else {})}
    resp = await client.get("/events?" + urlencode(params), headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200, await resp.text()
    doc = await resp.json()
    return doc["events"], doc["next_cursor"]


async def drain(client, token: str, cursor: str | None, limit: int = 1000) -> tuple[list[int], str]:
    """Read the feed until an empty page; the event ids in the order read."""
    ids: list[int] = []
    while True:
        events, cursor = await page(client, token, cursor, limit)
        if not events:
            return ids, cursor
        ids += [e["event_id"] for e in events]


async def delivery_order(db: asyncpg.Connection, token: str) -> list[int]:
    """What the token's feed must deliver: every stored event, ORDER BY xact, id, of the token's tenants."""
    scope = SCOPES[token]
    rows = await db.fetch("SELECT id, tenant_id FROM events ORDER BY xact, id")
    return [r["id"] for r in rows if scope is None or r["tenant_id"] in scope]


async def positions(db: asyncpg.Connection) -> dict[int, tuple[int, int]]:
    """Each stored event's place in the delivery order, (xact, id), as numbers."""
    return {r["id"]: (int(r["xact"]), r["id"]) for r in await db.fetch("SELECT id, xact::text AS xact FROM events")}


async def insert(conn: asyncpg.Connection, tenant: str, key: str) -> int:
    """One event through the service's own insert_event, on ``conn``; its id."""
    row = await conn.fetchrow(
        load_queries().sql("insert_event"),
        tenant,                          # $1 tenant_id
        "toast",                         # $2 source
        key,                             # $3 idempotency_key
        hashlib.sha256(b"{}").digest(),  # $4 body_sha256
        b"{}",                           # $5 body
        "application/json",              # $6 content_type
        None,                            # $7 headers
    )
    assert row is not None
    return int(row["id"])


@asynccontextmanager
async def all_in_background(coros: list[Coroutine[Any, Any, Any]]) -> AsyncIterator[list[asyncio.Task[Any]]]:
    """in_background for several: every task still running when the block ends is cancelled and awaited."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()  # nothing, if it is done
        await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled():
                task.exception()  # retrieved: a failure the test did not await is not logged again


async def test_an_event_that_commits_late_is_read_once_by_the_feed_and_skipped_by_id(reader, db, database_url,
                                                                                     token) -> None:
    cursor_at_start = (await page(reader, token, None))[1]
    tenants = ["shop-b", "shop-a", "shop-c"]  # shop-c: outside the scoped token's tenants
    # Another writer's shop-a k-0, uncommitted: the service's insert of it will wait on it.
    async with (hold_key(database_url, tenant="shop-a", source="toast", key="k-0", body=b"other") as held,
                in_background(post(reader, "shop-a", 0)) as stalled):
        await held.until_blocked()  # the service's insert of shop-a k-0 holds an id and waits
        later = [await post(reader, tenants[n % 3], n) for n in range(1, 31)]
        assert {r.status for r in later} == {201}

        # During the stall: what "id > last" sees, and what the feed reader gets.
        by_id = [r["id"] for r in await db.fetch("SELECT id FROM events WHERE id > 0 ORDER BY id")]
        last_seen_by_id = max(by_id)
        during, cursor = await page(reader, token, cursor_at_start)
        await held.rollback()  # the held row goes; the stalled insert now commits
        assert (await stalled).status == 201

    stalled_id = await db.fetchval("SELECT id FROM events WHERE tenant_id = 'shop-a' AND idempotency_key = 'k-0'")
    assert stalled_id < last_seen_by_id, "the stalled event must hold an early id for this test to bite"
    # The naive reader continues after the highest id it saw and never gets the stalled event.
    naive_after = [r["id"] for r in await db.fetch("SELECT id FROM events WHERE id > $1 ORDER BY id", last_seen_by_id)]
    assert stalled_id not in by_id + naive_after

    at = await positions(db)
    # While the stalled event's transaction ran, the feed never went past its place.
    passed = [e["event_id"] for e in during if at[e["event_id"]] > at[stalled_id]]
    assert passed == [], f"read during the stall, after the stalled event's place: {passed}"

    rest, _ = await drain(reader, token, cursor, limit=4)
    delivered = [e["event_id"] for e in during] + rest
    expected = await delivery_order(db, token)
    explain = f"during={[e['event_id'] for e in during]} rest={rest} expected={expected}"
    assert delivered == expected, explain
    assert delivered.count(stalled_id) == 1, explain
    assert len(delivered) == len(set(delivered)) == (31 if SCOPES[token] is None else 21), explain


async def test_an_event_with_the_lower_xact_and_the_higher_id_comes_first_and_neither_is_skipped(
        reader, db, database_url, token) -> None:
    # A transaction that took its xid before shop-b's event was written, and wrote
    # its shop-a event after: shop-a's row has the higher id and the lower xact.
    late = await asyncpg.connect(database_url)
    try:
        await late.execute("BEGIN")
        await late.fetchval("SELECT pg_current_xact_id()")
        answer = await post(reader, "shop-b", 1)
        assert answer.status == 201
        early_id = (await answer.json())["event_id"]
        during, cursor = await page(reader, token, None)  # the open xid holds shop-b's event back
        late_id = await insert(late, "shop-a", "k-late")
        await late.execute("COMMIT")
    finally:
        await late.close()
    at = await positions(db)
    assert late_id > early_id and at[late_id] < at[early_id], "id order must differ from delivery order to bite"

    rest, _ = await drain(reader, token, cursor, limit=1)  # a page boundary between the two
    delivered = [e["event_id"] for e in during] + rest
    assert delivered == [late_id, early_id] == await delivery_order(db, token)


async def test_6_tenants_posting_at_once_against_3_feed_readers_each_get_the_delivery_order_once(
        reader, db, token) -> None:
    tenants = [f"shop-{c}" for c in "abcdef"]
    scope = SCOPES[token]
    count = sum(40 for t in tenants if scope is None or t in scope)
    loop = asyncio.get_running_loop()

    async def consume() -> tuple[list[int], list[tuple[str, int]]]:
        """Page the feed (limit 7) until ``count`` events; the ids read, and each page's (next_cursor, last id)."""
        got: list[int] = []
        pages: list[tuple[str, int]] = []
        cursor = None
        deadline = loop.time() + 60
        while len(got) < count and loop.time() < deadline:
            events, cursor = await page(reader, token, cursor, limit=7, wait=1)
            if events:
                got += [e["event_id"] for e in events]
                pages.append((cursor, events[-1]["event_id"]))
        return got, pages

    async with all_in_background([consume() for _ in range(3)]) as readers:
        answers = await asyncio.gather(*(post(reader, tenant, n) for n in range(40) for tenant in tenants))
        assert {r.status for r in answers} == {201}
        results = await asyncio.gather(*readers)

    expected = await delivery_order(db, token)
    assert len(expected) == count
    at = await positions(db)
    for got, pages in results:
        assert got == expected, f"got={got}\nexpected={expected}"
        # Each next_cursor is the place of its page's last event, and they only go forward.
        cursors = [Cursor.decode(text, feed=True) for text, _ in pages]
        assert [(c.xact, c.id) for c in cursors] == [at[last] for _, last in pages]
        assert all(a < b for a, b in itertools.pairwise(cursors)), cursors
        assert (await page(reader, token, pages[-1][0]))[0] == [], "nothing after the last event"


async def test_a_page_limit_inside_one_batch_of_several_tenants_neither_skips_nor_repeats(make_client, db,
                                                                                        token) -> None:
    client = await make_client(api_tokens=(ReadToken(ALL, None), ReadToken(SOME, COVERED)), batching=True,
                               batch_max_delay_ms=50.0)
    tenants = ["shop-a", "shop-c", "shop-b"]
    answers = await asyncio.gather(*(post(client, tenants[n % 3], n) for n in range(12)))
    assert {r.status for r in answers} == {201}
    shared = await db.fetch("SELECT xact::text, count(DISTINCT tenant_id) AS tenants FROM events GROUP BY xact")
    assert any(r["tenants"] > 1 for r in shared), "events of several tenants should share a batch (one transaction)"
    read, _ = await drain(client, token, None, limit=3)
    assert read == await delivery_order(db, token)


async def test_an_idle_session_does_not_stall_the_feed_and_one_holding_an_xid_does(reader, db, database_url,
                                                                                  token) -> None:
    idle = await asyncpg.connect(database_url)
    try:
        await idle.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        await idle.fetchval("SELECT count(*) FROM events")  # a snapshot, but no xid
        assert (await post(reader, "shop-a", 1)).status == 201
        events, cursor = await page(reader, token, None)
        assert [(e["tenant_id"], e["idempotency_key"]) for e in events] == [("shop-a", "k-1")]
        await idle.fetchval("SELECT pg_current_xact_id()")  # now it holds an xid
        assert (await post(reader, "shop-b", 2)).status == 201
        held_back, cursor = await page(reader, token, cursor)
        assert held_back == [], "an older running xid, anywhere on the server, holds the feed back"
        await idle.execute("COMMIT")
    finally:
        await idle.close()
    events, _ = await page(reader, token, cursor)
    assert [(e["tenant_id"], e["idempotency_key"]) for e in events] == [("shop-b", "k-2")]
