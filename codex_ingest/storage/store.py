"""The write path: the one place events are deduplicated and stored.

Two ways in, the same dedup underneath (sql/events.sql):

* ``store_event``: one insert-or-skip statement per event (insert_event) —
  used when batching is off.
* ``store_batch``: many events in one such statement over arrays
  (insert_events) — used by batching.BatchWriter.

Each INSERT runs in its own implicit transaction with synchronous_commit
on, so when it returns the rows it reports are durable and the caller may
answer 2xx. A key the INSERT skipped is looked up in a second statement,
whose fresh snapshot sees an original that committed while the INSERT
waited on it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager, asynccontextmanager
from datetime import datetime

import asyncpg

from codex_ingest.errors import DatabaseUnavailable, EventRejected, IngestError
from codex_ingest.events import IncomingEvent, Outcome, StoreResult
from codex_ingest.storage.dberrors import ErrorCounter, describe, error_class, is_row_fault, must_discard, translated
from codex_ingest.storage.queries import Queries

log = logging.getLogger("codex_ingest.store")

# A key that conflicts yet cannot be found was deleted between the two
# statements (possible once retention exists); trying again settles it.
_MAX_ATTEMPTS = 3

Key = tuple[str, str, str]


def key_of(event: IncomingEvent) -> Key:
    return (event.tenant_id, event.source, event.idempotency_key)


def _compare(event: IncomingEvent, event_id: int, received_at: datetime, stored_sha256: bytes) -> StoreResult:
    # Constant time, as every comparison of digests and signatures in the service.
    same = hmac.compare_digest(stored_sha256, event.body_sha256)
    return StoreResult(Outcome.DUPLICATE if same else Outcome.CONFLICT, event_id, received_at, stored_sha256)


class EventStore:
    """Stores events through an asyncpg pool; speaks in events, not rows."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        queries: Queries,
        *,
        acquire_timeout: float,
        retry_after: int,
        count_error: ErrorCounter | None = None,
        after_write: Callable[[], None] | None = None,
    ) -> None:
        """``after_write`` is called when a write's transaction has ended, committed or not: it
        may have stored new events, or released the delivery horizon that held others back
        (it wakes waiting readers)."""
        self._pool = pool
        self._insert_one = queries.sql("insert_event")
        self._find_one = queries.sql("find_event")
        self._insert_many = queries.sql("insert_events")
        self._find_many = queries.sql("find_events")
        self._ping_sql = queries.sql("ping")
        self._acquire_timeout = acquire_timeout
        self._retry_after = retry_after
        self._count_error = count_error
        self._after_write = after_write

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    def _unavailable(self, detail: str | None = None) -> DatabaseUnavailable:
        return DatabaseUnavailable(detail, retry_after=self._retry_after)

    def _translated(self) -> AbstractContextManager[None]:
        return translated(self._retry_after, self._count_error)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pool connection; one that said the server is read-only is closed,
        not reused, so the pool reconnects (and may find a new primary)."""
        async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
            try:
                yield conn
            except asyncpg.PostgresError as exc:
                if must_discard(exc):
                    conn.terminate()
                raise

    # -- one event ------------------------------------------------------------

    async def store_event(self, event: IncomingEvent) -> StoreResult:
        try:
            with self._translated():
                async with self._connection() as conn:
                    return await self._store_one(conn, event)
        finally:
            if self._after_write is not None:
                self._after_write()

    async def _store_one(self, conn: asyncpg.Connection, event: IncomingEvent) -> StoreResult:
        for _ in range(_MAX_ATTEMPTS):
            inserted = await conn.fetchrow(
                self._insert_one,
                event.tenant_id,        # $1 tenant_id
                event.source,           # $2 source
                event.idempotency_key,  # $3 idempotency_key
                event.body_sha256,      # $4 body_sha256
                event.body,             # $5 body
                event.content_type,     # $6 content_type
                event.headers,          # $7 headers (JSON text, or None)
            )
            if inserted is not None:
                return StoreResult(Outcome.ACCEPTED, inserted["id"], inserted["received_at"], event.body_sha256)
            existing = await conn.fetchrow(
                self._find_one,
                event.tenant_id,        # $1 tenant_id
                event.source,           # $2 source
                event.idempotency_key,  # $3 idempotency_key
            )
            if existing is not None:
                return _compare(event, existing["id"], existing["received_at"], bytes(existing["body_sha256"]))
        raise self._unavailable("the event's key kept changing state; retry")

    # -- a micro-batch --------------------------------------------------------

    async def store_batch(self, events: Sequence[IncomingEvent]) -> list[StoreResult | IngestError]:
        """Store many events with one INSERT (one commit); a result or an error per event, in order.

        Events sharing a key inside the batch are settled as across batches:
        the first is the one stored (201); the others are duplicates of it or
        conflicts with it. If the batch statement fails for a reason of one
        row's own, each event is retried alone so that only that row fails.
        Raises DatabaseUnavailable when the database cannot take the batch.
        """
        leaders: dict[Key, IncomingEvent] = {}
        for event in events:
            leaders.setdefault(key_of(event), event)
        # Sorted by key: concurrent batches then lock index entries in one order.
        ordered = [leaders[k] for k in sorted(leaders)]
        try:
            with self._translated():
                async with self._connection() as conn:
                    try:
                        settled: dict[Key, StoreResult | IngestError] = dict(await self._store_many(conn, ordered))
                    except Exception as exc:
                        if not is_row_fault(exc):
                            raise
                        log.warning("batch rejected; storing its events one by one", extra={"error": describe(exc)})
                        settled = await self._store_each(conn, ordered)
        finally:
            if self._after_write is not None:
                self._after_write()
        results: list[StoreResult | IngestError] = []
        for event in events:
            key = key_of(event)
            lead = settled[key]
            if leaders[key] is event or isinstance(lead, IngestError):
                results.append(lead)
            else:
                results.append(_compare(event, lead.event_id, lead.received_at, lead.stored_sha256))
        return results

    async def _store_many(self, conn: asyncpg.Connection, events: list[IncomingEvent]) -> dict[Key, StoreResult]:
        settled: dict[Key, StoreResult] = {}
        remaining = events
        for _ in range(_MAX_ATTEMPTS):
            rows = await conn.fetch(
                self._insert_many,
                [e.tenant_id for e in remaining],        # $1 tenant_id[]
                [e.source for e in remaining],           # $2 source[]
                [e.idempotency_key for e in remaining],  # $3 idempotency_key[]
                [e.body_sha256 for e in remaining],      # $4 body_sha256[]
                [e.body for e in remaining],             # $5 body[]
                [e.content_type for e in remaining],     # $6 content_type[]
                [e.headers for e in remaining],          # $7 headers[] (JSON text, or None)
            )
            by_key = {key_of(e): e for e in remaining}
            for row in rows:
                key = (row["tenant_id"], row["source"], row["idempotency_key"])
                settled[key] = StoreResult(Outcome.ACCEPTED, row["id"], row["received_at"], by_key[key].body_sha256)
            skipped = [e for e in remaining if key_of(e) not in settled]
            if not skipped:
                return settled
            found = await conn.fetch(
                self._find_many,
                [e.tenant_id for e in skipped],          # $1 tenant_id[]
                [e.source for e in skipped],             # $2 source[]
                [e.idempotency_key for e in skipped],    # $3 idempotency_key[]
            )
            for row in found:
                key = (row["tenant_id"], row["source"], row["idempotency_key"])
                settled[key] = _compare(by_key[key], row["id"], row["received_at"], bytes(row["body_sha256"]))
            remaining = [e for e in skipped if key_of(e) not in settled]
            if not remaining:
                return settled
        raise self._unavailable("some keys kept changing state; retry")

    async def _store_each(
        self, conn: asyncpg.Connection, events: list[IncomingEvent]
    ) -> dict[Key, StoreResult | IngestError]:
        settled: dict[Key, StoreResult | IngestError] = {}
        for event in events:
            try:
                settled[key_of(event)] = await self._store_one(conn, event)
            except Exception as exc:
                # Only a row's own fault fails that row alone; anything else
                # fails the batch, translated by the one rule (dberrors).
                if not is_row_fault(exc):
                    raise
                if self._count_error is not None:
                    self._count_error(error_class(exc))
                log.warning("event rejected by the database", extra={"error": describe(exc)})
                settled[key_of(event)] = EventRejected()
        return settled

    # -- health ---------------------------------------------------------------

    async def ping(self, timeout: float) -> None:
        """One round trip; raises DatabaseUnavailable when the database does not answer in time."""
        with self._translated():
            async with asyncio.timeout(timeout):
                async with self._pool.acquire() as conn:
                    await conn.fetchval(self._ping_sql)
