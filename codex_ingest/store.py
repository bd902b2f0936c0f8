"""The write path: the one place an event is deduplicated and stored.

``EventStore.store_event`` runs the single ``INSERT ... ON CONFLICT DO
NOTHING RETURNING`` (sql/events.sql: insert_event). The statement runs in
its own implicit transaction with synchronous_commit on, so when it returns
a row the event is durable and the caller may answer 2xx.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from codex_ingest.dberrors import unavailable_on_failure
from codex_ingest.errors import DatabaseUnavailable
from codex_ingest.intake import IncomingEvent
from codex_ingest.queries import Queries

# A key that conflicts yet cannot be found was deleted between the two
# statements (possible once retention exists); trying again settles it.
_MAX_ATTEMPTS = 3


class Outcome(enum.Enum):
    ACCEPTED = "accepted"      # new event, stored now
    DUPLICATE = "duplicate"    # same key, same body: stored before
    CONFLICT = "conflict"      # same key, different body: nothing replaced


@dataclass(frozen=True, slots=True)
class StoreResult:
    outcome: Outcome
    event_id: int
    received_at: datetime


class EventStore:
    """Stores events through an asyncpg pool; speaks in events, not rows."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        queries: Queries,
        *,
        acquire_timeout: float,
        retry_after: int,
    ) -> None:
        self._pool = pool
        self._insert_sql = queries.sql("insert_event")
        self._find_sql = queries.sql("find_event")
        self._ping_sql = queries.sql("ping")
        self._acquire_timeout = acquire_timeout
        self._retry_after = retry_after

    async def store_event(self, event: IncomingEvent) -> StoreResult:
        with unavailable_on_failure(self._retry_after):
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                for _ in range(_MAX_ATTEMPTS):
                    inserted = await conn.fetchrow(
                        self._insert_sql,
                        event.tenant_id,        # $1 tenant_id
                        event.source,           # $2 source
                        event.idempotency_key,  # $3 idempotency_key
                        event.body_sha256,      # $4 body_sha256
                        event.body,             # $5 body
                        event.content_type,     # $6 content_type
                    )
                    if inserted is not None:
                        return StoreResult(Outcome.ACCEPTED, inserted["id"], inserted["received_at"])
                    # ON CONFLICT waited for a concurrent original to commit;
                    # this second statement's snapshot sees it.
                    existing = await conn.fetchrow(
                        self._find_sql,
                        event.tenant_id,        # $1 tenant_id
                        event.source,           # $2 source
                        event.idempotency_key,  # $3 idempotency_key
                    )
                    if existing is not None:
                        same_body = bytes(existing["body_sha256"]) == event.body_sha256
                        return StoreResult(
                            Outcome.DUPLICATE if same_body else Outcome.CONFLICT,
                            existing["id"],
                            existing["received_at"],
                        )
        raise DatabaseUnavailable(
            "the event's key kept changing state; retry", retry_after=self._retry_after
        )

    async def ping(self, timeout: float) -> None:
        """One round trip; raises DatabaseUnavailable when the database does not answer in time."""
        with unavailable_on_failure(self._retry_after):
            async with asyncio.timeout(timeout):
                async with self._pool.acquire() as conn:
                    await conn.fetchval(self._ping_sql)
