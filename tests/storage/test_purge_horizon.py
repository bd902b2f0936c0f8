"""The purge horizon only ever moves forward, whatever order retention
deletes rows in (storage/retention.py, sql/retention.sql's purge_chunk).

A reader whose cursor is behind the horizon gets 410; a horizon that moved
back would let a cursor between the old and the new horizon read on past
deleted events, silently. Each chunk sets the horizon of the tenants it
touched to the last (xact, id) it deleted, so two chunks that delete a
higher (xact, id) first and a lower one after must leave the higher one.
Both orders are real: received_at is not monotonic in (xact, id) (a
batch's rows get their received_at when it starts, its xact when it
writes; clocks step), and chunks go by id, which is not (xact, id) order
when transactions commit out of order.
"""

from __future__ import annotations

import asyncpg
import pytest

from codex_ingest.storage import retention
from codex_ingest.storage.queries import Queries, load_queries

TENANT = "shop-h"
DAY = 86400.0


@pytest.fixture(scope="module")
def queries() -> Queries:
    return load_queries()


async def insert(conn: asyncpg.Connection, queries: Queries, key: str) -> int:
    """One event through the service's own insert_event; its id."""
    row = await conn.fetchrow(
        queries.sql("insert_event"),
        TENANT,      # $1 tenant_id
        "square",    # $2 source
        key,         # $3 idempotency_key
        bytes(32),   # $4 body_sha256
        b"{}",       # $5 body
        None,        # $6 content_type
        None,        # $7 headers
    )
    assert row is not None
    return int(row["id"])


async def age(db: asyncpg.Connection, event_id: int, days: int) -> None:
    await db.execute(f"UPDATE events SET received_at = now() - interval '{days} days' WHERE id = $1", event_id)


async def position(db: asyncpg.Connection, event_id: int) -> tuple[int, int]:
    return (int(await db.fetchval("SELECT xact::text FROM events WHERE id = $1", event_id)), event_id)


async def horizon(db: asyncpg.Connection, queries: Queries) -> tuple[int, int] | None:
    row = await db.fetchrow("SELECT xact::text AS xact, id FROM purge_horizons WHERE tenant_id = $1", TENANT)
    return None if row is None else (int(row["xact"]), row["id"])


async def test_a_later_purge_of_an_earlier_position_does_not_move_the_horizon_back(db, queries) -> None:
    low = await insert(db, queries, "low")    # its own transaction: the lower (xact, id)
    high = await insert(db, queries, "high")
    low_at, high_at = await position(db, low), await position(db, high)
    assert low_at < high_at
    await age(db, low, 2)
    await age(db, high, 10)  # received_at out of (xact, id) order

    assert await retention.purge(db, queries, 5 * DAY) == 1  # deletes high only
    assert await horizon(db, queries) == high_at
    assert await retention.purge(db, queries, 1 * DAY) == 1  # then low, behind it
    assert await horizon(db, queries) == high_at, "the purge horizon moved back"

    # It still moves forward.
    later = await insert(db, queries, "later")
    later_at = await position(db, later)
    await age(db, later, 10)
    assert await retention.purge(db, queries, 1 * DAY) == 1
    assert await horizon(db, queries) == later_at > high_at


async def test_chunks_deleting_a_higher_position_before_a_lower_one_leave_the_higher(db, database_url, queries) -> None:
    # A transaction that took its xid first but wrote last: its row has the
    # higher id and the lower xact, and chunks go by id.
    late = await asyncpg.connect(database_url)
    try:
        async with late.transaction():
            await late.fetchval("SELECT pg_current_xact_id()")
            first = await insert(db, queries, "committed-first")
            second = await insert(late, queries, "committed-last")
    finally:
        await late.close()
    first_at, second_at = await position(db, first), await position(db, second)
    assert first < second and second_at < first_at
    await age(db, first, 10)
    await age(db, second, 10)

    chunks: list[int] = []
    deleted = await retention.purge(db, queries, DAY, chunk_rows=1, on_chunk=chunks.append, rest_per_work=0)
    assert deleted == 2 and chunks == [1, 1]  # first (the higher position), then second
    assert await horizon(db, queries) == first_at, "the purge horizon moved back"
