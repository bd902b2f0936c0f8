"""docs/scaling.md's first step, verified: the events schema hash-partitioned
by tenant_id (deploy/citus/events_by_tenant.sql) takes the service's own
dedup, batch insert and cursor read, unchanged (the same sql/ files, the same
EventStore and EventLog)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import asyncpg
import pytest

from codex_ingest.events import IncomingEvent, Outcome
from codex_ingest.storage.delivery import EventLog
from codex_ingest.storage.queries import load_queries
from codex_ingest.storage.retention import purge
from codex_ingest.storage.store import EventStore

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "deploy" / "citus" / "events_by_tenant.sql"
DELIVERY_TABLES = ROOT / "migrations" / "0006_delivery.sql"  # applied as it is, after the schema
TENANTS = [f"tenant-{n}" for n in range(12)]


def event(tenant: str, key: str, body: bytes = b'{"n":1}') -> IncomingEvent:
    return IncomingEvent(tenant, "pos", key, body, hashlib.sha256(body).digest(), "application/json")


@pytest.fixture
async def sharded(new_database):
    url = new_database()
    conn = await asyncpg.connect(url)
    await conn.execute(SCHEMA.read_text())
    await conn.execute(DELIVERY_TABLES.read_text())
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    queries = load_queries()
    try:
        yield conn, EventStore(pool, queries, acquire_timeout=5, retry_after=1), EventLog(
            pool, queries, acquire_timeout=5, retry_after=1)
    finally:
        await pool.close()
        await conn.close()


async def test_the_rows_really_spread_over_the_shards(sharded) -> None:
    conn, store, _ = sharded
    await store.store_batch([event(t, "k") for t in TENANTS])
    per_shard = await conn.fetch("SELECT tableoid::regclass::text AS shard, count(*) FROM events GROUP BY 1")
    assert len(per_shard) >= 3, per_shard
    # Each tenant lives on exactly one shard: its dedup and its cursor stay there.
    spread = await conn.fetch("SELECT tenant_id, count(DISTINCT tableoid) AS shards FROM events GROUP BY 1")
    assert {r["shards"] for r in spread} == {1}


async def test_dedup_one_event_and_a_batch_on_the_partitioned_table(sharded) -> None:
    conn, store, _ = sharded
    first = await store.store_event(event("tenant-1", "k-1"))
    again = await store.store_event(event("tenant-1", "k-1"))
    changed = await store.store_event(event("tenant-1", "k-1", b'{"n":2}'))
    assert (first.outcome, again.outcome, changed.outcome) == (Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.CONFLICT)
    assert again.event_id == first.event_id

    batch = [event(t, "k-1") for t in TENANTS] + [event("tenant-1", "k-2"), event("tenant-1", "k-2")]
    results = await store.store_batch(batch)
    outcomes = [r.outcome for r in results]
    assert outcomes[1] is Outcome.DUPLICATE  # tenant-1 / k-1 was stored above
    assert outcomes.count(Outcome.ACCEPTED) == len(TENANTS)  # 11 other tenants' k-1, and k-2 once
    assert outcomes[-1] is Outcome.DUPLICATE
    assert await conn.fetchval("SELECT count(*) FROM events") == len(TENANTS) + 1
    assert await conn.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM events GROUP BY tenant_id, source, idempotency_key HAVING count(*) > 1) d") == 0


async def test_the_cursor_reads_each_tenant_once_in_order_and_purge_keeps_its_horizon(sharded) -> None:
    conn, store, log = sharded
    for round_ in range(3):
        await store.store_batch([event(t, f"k-{round_}") for t in TENANTS])
    for tenant in TENANTS[:4]:
        seen: list[str] = []
        cursor = None
        while (page := await log.page(tenant, None, cursor, 2)).events:
            seen += [e.idempotency_key for e in page.events]
            cursor = page.next_cursor
        assert seen == ["k-0", "k-1", "k-2"]
    await conn.execute("UPDATE events SET received_at = now() - interval '2 days' WHERE idempotency_key = 'k-0'")
    assert await purge(conn, load_queries(), 86400) == len(TENANTS)
    assert await conn.fetchval("SELECT count(*) FROM purge_horizons") == len(TENANTS)
