"""The cursor never skips and never repeats, whatever the commit order.

The out-of-order commit is made on purpose: a transaction of the test's own
holds one key's row uncommitted, so the service's insert of that key waits
holding an early id while later events commit. A reader continuing from its
cursor gets the stalled event exactly once; a reader using ``id > last``
misses it, which shows the scenario bites.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import asyncpg
import pytest

from codex_ingest.settings import ReadToken
from tests.db_faults import hold_key, sqlstate_fault
from tests.helpers import headers, in_background, readers_waiting, until

# The write path: batched and direct writes must each keep these promises.
pytestmark = pytest.mark.both_write_paths

TOKEN = "order-test-token-0123456789"
TENANT = "shop-a"
URL = "/pos/toast/ingest"


@pytest.fixture
async def reader(make_client):
    # Two batches in flight: one may stall on the held key while the other commits the rest.
    return await make_client(api_tokens=(ReadToken(TOKEN, None),), db_pool_max=4, batch_max_in_flight=2)


def body(n: int) -> bytes:
    return b'{"guid":"order-%d","eventType":"ORDER_UPDATED"}' % n


async def post(client, n: int, tenant: str = TENANT):
    return await client.post(URL, data=body(n), headers=headers(body(n), tenant=tenant, **{"Idempotency-Key": f"k-{n}"}))


async def page(client, cursor: str | None, limit: int = 1000, wait: float = 0) -> tuple[list[dict], str]:
    params = {"tenant": TENANT, "limit": limit, "wait": wait, **({"after": cursor} if cursor else {})}
    resp = await client.get("/events?" + urlencode(params), headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200, await resp.text()
    doc = await resp.json()
    return doc["events"], doc["next_cursor"]


async def drain(client, cursor: str | None, limit: int = 1000) -> tuple[list[int], str]:
    """Read until an empty page; the event ids in the order read."""
    ids: list[int] = []
    while True:
        events, cursor = await page(client, cursor, limit)
        if not events:
            return ids, cursor
        ids += [e["event_id"] for e in events]


async def test_an_event_that_commits_late_is_read_once_by_cursor_and_skipped_by_id(reader, db, database_url) -> None:
    cursor_at_start = (await page(reader, None))[1]
    # Another writer's k-0, uncommitted: the service's insert of k-0 will wait on it.
    async with (hold_key(database_url, tenant=TENANT, source="toast", key="k-0", body=b"other") as held,
                in_background(post(reader, 0)) as stalled):
        await held.until_blocked()  # the service's insert of k-0 holds an id and waits
        later = [await post(reader, n) for n in range(1, 31)]
        assert {r.status for r in later} == {201}

        # During the stall: what "id > last" sees, and what the cursor reader gets.
        by_id = [r["id"] for r in await db.fetch("SELECT id FROM events WHERE id > 0 ORDER BY id")]
        last_seen_by_id = max(by_id)
        during, cursor = await page(reader, cursor_at_start)
        await held.rollback()  # the held row goes; the stalled insert now commits
        assert (await stalled).status == 201

    stalled_id = await db.fetchval("SELECT id FROM events WHERE idempotency_key = 'k-0'")
    assert stalled_id < last_seen_by_id, "the stalled event must hold an early id for this test to bite"
    # The naive reader continues after the highest id it saw and never gets the stalled event.
    naive_after = [r["id"] for r in await db.fetch("SELECT id FROM events WHERE id > $1 ORDER BY id", last_seen_by_id)]
    assert stalled_id not in by_id + naive_after

    rest, _ = await drain(reader, cursor)
    delivered = [e["event_id"] for e in during] + rest
    everything = [r["id"] for r in await db.fetch("SELECT id FROM events")]
    order = [(r["id"], r["xact"]) for r in await db.fetch("SELECT id, xact::text FROM events ORDER BY xact, id")]
    explain = f"during={[e['event_id'] for e in during]} rest={rest} order={order}"
    assert sorted(delivered) == sorted(everything), explain
    assert len(delivered) == len(set(delivered)) == 31, explain
    assert stalled_id in delivered


async def test_a_page_limit_inside_one_batch_neither_skips_nor_repeats(make_client, db) -> None:
    client = await make_client(api_tokens=(ReadToken(TOKEN, None),), batching=True, batch_max_delay_ms=50.0)
    answers = await asyncio.gather(*(post(client, n) for n in range(10)))
    ids = sorted([(await r.json())["event_id"] for r in answers])
    xacts = {r["xact"] for r in await db.fetch("SELECT xact::text FROM events")}
    assert len(xacts) < len(ids), "the events should share a batch (one transaction)"
    read, _ = await drain(client, None, limit=3)
    assert read == ids


async def test_a_rolled_back_batch_never_appears_and_its_retry_appears_once(reader, db) -> None:
    async with sqlstate_fault(db, "XX000"):
        assert (await post(reader, 1)).status == 503
        events, cursor = await page(reader, None)
        assert events == []
    assert (await post(reader, 1)).status == 201
    ids, _ = await drain(reader, cursor)
    assert len(ids) == 1


async def test_an_idle_session_without_an_xid_does_not_stall_delivery_and_one_with_an_xid_does(reader, db, database_url) -> None:
    idle = await asyncpg.connect(database_url)
    try:
        await idle.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        await idle.fetchval("SELECT count(*) FROM events")  # a snapshot, but no xid
        await post(reader, 1)
        assert len((await page(reader, None))[0]) == 1
        await idle.fetchval("SELECT pg_current_xact_id()")  # now it holds an xid
        await post(reader, 2)
        events, cursor = await page(reader, None)
        assert [e["idempotency_key"] for e in events] == ["k-1"], "an older running xid holds delivery back"
        await idle.execute("COMMIT")
    finally:
        await idle.close()
    events, _ = await page(reader, cursor)
    assert [e["idempotency_key"] for e in events] == ["k-2"]


async def test_100_concurrent_posts_against_3_concurrent_readers_each_get_everything_once(reader, db) -> None:
    async def consume() -> list[int]:
        got: list[int] = []
        cursor = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(got) < 100 and loop.time() < deadline:
            events, cursor = await page(reader, cursor, limit=7, wait=1)
            got += [e["event_id"] for e in events]
        return got

    readers = [asyncio.create_task(consume()) for _ in range(3)]
    answers = await asyncio.gather(*(post(reader, n) for n in range(100)))
    assert {r.status for r in answers} == {201}
    everything = sorted([r["id"] for r in await db.fetch("SELECT id FROM events")])
    for got in await asyncio.gather(*readers):
        assert sorted(got) == everything, f"got={got}"
        assert len(got) == len(set(got)) == 100


async def test_delivery_order_is_numeric_when_transaction_ids_gain_a_digit(reader, db) -> None:
    # Sorting the text of the ids would put 100 before 99 and skip past 99.
    for key, xact in (("k-late", "100"), ("k-early", "99")):
        await db.execute(
            "INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, xact)"
            " VALUES ($1, 'toast', $2, $3, '{}', $4::text::xid8)", TENANT, key, b"\x00" * 32, xact)
    first, cursor = await page(reader, None, limit=1)
    second, _ = await page(reader, cursor, limit=1)
    assert [e["idempotency_key"] for e in first + second] == ["k-early", "k-late"]


async def test_a_waiting_reader_gets_an_event_when_a_foreign_transaction_that_held_it_back_ends(reader, db, database_url) -> None:
    # Nothing notifies when someone else's transaction ends: the listener's horizon check does.
    _, cursor = await page(reader, None)
    blocker = await asyncpg.connect(database_url)
    try:
        await blocker.execute("BEGIN")
        await blocker.fetchval("SELECT pg_current_xact_id()")  # holds an xid: the horizon stops here
        assert (await post(reader, 1)).status == 201
        loop = asyncio.get_running_loop()
        async with in_background(page(reader, cursor, wait=30)) as waiting:
            # Parked at the head: it has read, found the event held back, and waits.
            await until(lambda: readers_waiting(reader), "the reader to wait at the head")
            assert not waiting.done(), "the event must wait behind the open transaction"
            await blocker.execute("COMMIT")
            ended = loop.time()
            events, _ = await waiting
        # The promise is "when the horizon moves" (checked once a second), not at the
        # reader's 30 s timeout: the bound sits far from both.
        assert loop.time() - ended < 15, "delivered at the reader's timeout, not when the horizon moved"
    finally:
        await blocker.close()
    assert [e["idempotency_key"] for e in events] == ["k-1"]
