"""Micro-batching against real PostgreSQL: intra-batch duplicates and
conflicts, a failing row, a failing batch, cancellation and shutdown."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import asyncpg
import pytest

from codex_ingest.errors import DatabaseUnavailable, EventRejected
from codex_ingest.events import IncomingEvent, Outcome
from codex_ingest.storage.batching import BatchWriter
from codex_ingest.storage.queries import load_queries
from codex_ingest.storage.store import EventStore
from tests.db_faults import hold_key


def event(key: str, body: bytes, *, tenant: str = "t1", content_type: str | None = "application/json") -> IncomingEvent:
    return IncomingEvent(tenant, "square", key, body, hashlib.sha256(body).digest(), content_type)


class RecordingStore(EventStore):
    """The real store, noting the size of every batch it writes and the
    most batches it was writing at once."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batch_sizes: list[int] = []
        self.writing = 0
        self.most_writing = 0

    async def store_batch(self, events):
        self.batch_sizes.append(len(events))
        self.writing += 1
        self.most_writing = max(self.most_writing, self.writing)
        try:
            return await super().store_batch(events)
        finally:
            self.writing -= 1


@pytest.fixture
async def pool(database_url: str, db: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def store(pool: asyncpg.Pool) -> RecordingStore:
    return RecordingStore(pool, load_queries(), acquire_timeout=0.5, retry_after=3)


async def count(db: asyncpg.Connection) -> int:
    return await db.fetchval("SELECT count(*) FROM events")


async def test_intra_batch_duplicates_and_conflicts_settle_like_separate_requests(store, db) -> None:
    a, a_again, a_other, b = event("a", b"{}"), event("a", b"{}"), event("a", b"[]"), event("b", b"{}")
    results = await store.store_batch([a, a_again, a_other, b])
    first, dup, conflict, other = results
    assert first.outcome is Outcome.ACCEPTED and other.outcome is Outcome.ACCEPTED
    assert dup.outcome is Outcome.DUPLICATE and dup.event_id == first.event_id
    assert conflict.outcome is Outcome.CONFLICT and conflict.event_id == first.event_id
    assert await count(db) == 2
    stored = await db.fetchval("SELECT body FROM events WHERE idempotency_key = 'a'")
    assert bytes(stored) == b"{}"


async def test_first_in_batch_wins_even_when_its_key_sorts_later(store, db) -> None:
    # The batch is written sorted by key, but "first" means arrival order.
    results = await store.store_batch([event("z", b"[1]"), event("z", b"[2]"), event("a", b"[3]")])
    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.CONFLICT, Outcome.ACCEPTED]
    assert bytes(await db.fetchval("SELECT body FROM events WHERE idempotency_key = 'z'")) == b"[1]"


async def test_batch_reports_events_stored_by_earlier_batches(store, db) -> None:
    (first,) = await store.store_batch([event("k", b"{}")])
    again, changed, new = await store.store_batch([event("k", b"{}"), event("k", b"[0]"), event("n", b"{}")])
    assert again.outcome is Outcome.DUPLICATE and again.event_id == first.event_id
    assert changed.outcome is Outcome.CONFLICT
    assert new.outcome is Outcome.ACCEPTED
    assert await count(db) == 2


async def test_one_row_the_database_rejects_does_not_fail_its_batch_mates(store, db) -> None:
    # PostgreSQL text cannot hold NUL: the batch statement fails on this row.
    bad = event("bad", b"{}", content_type="application/json\x00")
    results = await store.store_batch([event("g1", b"{}"), bad, event("g2", b"{}")])
    assert results[0].outcome is Outcome.ACCEPTED and results[2].outcome is Outcome.ACCEPTED
    assert isinstance(results[1], EventRejected)
    keys = [r["idempotency_key"] for r in await db.fetch("SELECT idempotency_key FROM events ORDER BY id")]
    assert sorted(keys) == ["g1", "g2"]


async def test_a_failing_batch_fails_only_its_own_requests(pool, store, db) -> None:
    writer = BatchWriter(store, max_rows=50, max_delay=0.05, max_concurrent=4, retry_after=3)
    # Hold every pool connection: the batch cannot get one within its timeout.
    held = [await pool.acquire() for _ in range(4)]
    try:
        doomed = await asyncio.gather(
            *(writer.submit(event(f"f{i}", b"{}")) for i in range(5)), return_exceptions=True
        )
    finally:
        for conn in held:
            await pool.release(conn)
    assert all(isinstance(r, DatabaseUnavailable) for r in doomed)
    assert await count(db) == 0
    later = await asyncio.gather(*(writer.submit(event(f"f{i}", b"{}")) for i in range(5)))
    assert all(r.outcome is Outcome.ACCEPTED for r in later)
    assert await count(db) == 5
    await writer.close()


async def test_batches_respect_max_rows_and_every_request_gets_its_own_answer(store, db) -> None:
    writer = BatchWriter(store, max_rows=3, max_delay=0.01, max_concurrent=2, retry_after=3)
    events = [event(f"m{i % 7}", b"{}") for i in range(20)]
    results = await asyncio.gather(*(writer.submit(e) for e in events))
    await writer.close()
    assert max(store.batch_sizes) <= 3 and sum(store.batch_sizes) == 20
    assert sum(r.outcome is Outcome.ACCEPTED for r in results) == 7
    assert sum(r.outcome is Outcome.DUPLICATE for r in results) == 13
    ids = {}
    for e, r in zip(events, results, strict=True):
        ids.setdefault(e.idempotency_key, set()).add(r.event_id)
    assert all(len(v) == 1 for v in ids.values())
    assert await count(db) == 7


async def test_a_cancelled_request_is_committed_with_its_batch_or_not_at_all(store, db) -> None:
    # The batch is cut by size (its third event), never by the clock: max_delay
    # is out of reach, so a slow machine cannot write it before the cancel.
    writer = BatchWriter(store, max_rows=3, max_delay=60, max_concurrent=2, retry_after=3)
    gone = asyncio.create_task(writer.submit(event("gone", b"{}")))
    stays = asyncio.create_task(writer.submit(event("stays", b"{}")))
    await asyncio.sleep(0)  # one turn of the loop: both tasks run up to their wait (asyncio runs them in order)
    assert store.batch_sizes == [] and not gone.done() and not stays.done()
    gone.cancel()  # the client disconnected while its batch was gathering
    third = await writer.submit(event("third", b"{}"))  # the batch is full: written now
    result = await stays
    await writer.close()
    assert gone.cancelled()
    assert result.outcome is Outcome.ACCEPTED and third.outcome is Outcome.ACCEPTED
    assert store.batch_sizes == [3]
    # All three were in the batch that committed: the cancelled one is stored
    # (never acknowledged); a retry of it will be answered as a duplicate.
    assert await count(db) == 3
    (retry,) = await store.store_batch([event("gone", b"{}")])
    assert retry.outcome is Outcome.DUPLICATE


async def test_shutdown_writes_pending_batches_and_refuses_new_ones(store, db) -> None:
    # A delay out of reach: only close() can cut this batch.
    writer = BatchWriter(store, max_rows=100, max_delay=60, max_concurrent=2, retry_after=3)
    waiting = [asyncio.create_task(writer.submit(event(f"s{i}", b"{}"))) for i in range(10)]
    await asyncio.sleep(0)  # one turn of the loop: every submit has queued its event
    assert not any(t.done() for t in waiting) and store.batch_sizes == []  # held by the delay
    # Generous, and still far below the delay: the promise is that close does
    # not wait the delay out, not how fast it writes.
    await asyncio.wait_for(writer.close(), 30)
    assert all(t.result().outcome is Outcome.ACCEPTED for t in waiting)
    assert await count(db) == 10
    with pytest.raises(DatabaseUnavailable):
        await writer.submit(event("late", b"{}"))


async def test_shutdown_waits_for_a_batch_in_flight(store, db, database_url: str) -> None:
    held = event("inflight", b"{}")
    async with hold_key(database_url, tenant=held.tenant_id, source=held.source, key=held.idempotency_key,
                        body=held.body, content_type=held.content_type or "application/json") as holder:
        writer = BatchWriter(store, max_rows=100, max_delay=0, max_concurrent=2, retry_after=3)
        answer = asyncio.create_task(writer.submit(event("inflight", b"{}")))
        await holder.until_blocked()  # the batch is in flight, waiting on the holder's row
        closing = asyncio.create_task(writer.close())
        # A chance for close to return early, not a wait for a condition: a
        # correct close never returns while its batch is blocked, so however
        # slow the machine, this cannot fail a correct writer.
        await asyncio.wait([closing], timeout=0.2)
        assert not closing.done() and not answer.done()
        assert len(await holder.waiters()) == 1  # still blocked: the lock is what holds close
        await holder.commit()
        await asyncio.wait_for(closing, 30)
    assert answer.result().outcome is Outcome.DUPLICATE


@pytest.mark.parametrize("in_flight", [1, 3])
async def test_batches_in_flight_never_exceed_the_limit(store, db, in_flight: int) -> None:
    # BATCH_MAX_IN_FLIGHT: however many requests arrive at once, at most that
    # many batches are written at a time, and every event still gets stored.
    writer = BatchWriter(store, max_rows=8, max_delay=0, max_concurrent=in_flight, retry_after=3)
    results = await asyncio.gather(*(writer.submit(event(f"n{i}", b"{}")) for i in range(200)))
    await writer.close()
    assert all(r.outcome is Outcome.ACCEPTED for r in results)
    assert await count(db) == 200
    assert store.most_writing == in_flight
    assert len(store.batch_sizes) >= 200 // 8
