"""Reading stored events back in delivery order, by cursor.

The order is (xact, id): the transaction that stored a row, then its id. A
page holds only rows whose transaction is older than every transaction
still running (sql/read.sql), so a row that commits late — a batch that
waited on another's lock while later ids committed — is never behind a
cursor that has already passed: a consumer that always continues from
``next_cursor`` gets every committed event of its tenant exactly once,
whatever the commit order. The price: a long-running writing transaction
anywhere on the server holds delivery back (never skips); its age is the
horizon lag metric.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from codex_ingest.errors import CursorExpired, InvalidParameter
from codex_ingest.storage.dberrors import ErrorCounter, translated
from codex_ingest.storage.queries import Queries

_CURSOR_TEXT = re.compile(r"^(\d{1,20}):(\d{1,19})$")


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A position in one tenant's delivery order; the API shows it as an opaque string."""

    xact: int
    id: int

    def encode(self) -> str:
        return base64.urlsafe_b64encode(f"{self.xact}:{self.id}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raw = ""
        match = _CURSOR_TEXT.fullmatch(raw)
        if match is None or len(text) > 64:
            raise InvalidParameter("invalid_cursor", "after must be a next_cursor this service returned")
        return cls(int(match.group(1)), int(match.group(2)))


START = Cursor(0, 0)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    cursor: Cursor
    event_id: int
    tenant_id: str
    source: str
    idempotency_key: str
    received_at: datetime
    content_type: str | None
    body: bytes


def _event(row: asyncpg.Record) -> StoredEvent:
    return StoredEvent(
        cursor=Cursor(int(row["xact_text"]), row["id"]),
        event_id=row["id"],
        tenant_id=row["tenant_id"],
        source=row["source"],
        idempotency_key=row["idempotency_key"],
        received_at=row["received_at"],
        content_type=row["content_type"],
        body=bytes(row["body"]),
    )


class EventLog:
    """Pages of a tenant's events after a cursor, through the pool."""

    def __init__(
        self, pool: asyncpg.Pool, queries: Queries, *, acquire_timeout: float, retry_after: int,
        count_error: ErrorCounter | None = None,
    ) -> None:
        self._pool = pool
        self._read = queries.sql("read_events")
        self._horizon = queries.sql("purge_horizon")
        self._horizon_lag = queries.sql("horizon_lag")
        self._oldest_age = queries.sql("oldest_event_age")
        self._acquire_timeout = acquire_timeout
        self._retry_after = retry_after
        self._count_error = count_error

    async def page(self, tenant: str, source: str | None, after: Cursor | None, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` deliverable events after ``after`` (None: from the first retained one).

        Raises CursorExpired (410) when retention deleted events of this
        tenant after ``after``: continuing would skip them.
        """
        position = after or START
        with translated(self._retry_after, self._count_error):
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                if after is not None:
                    horizon = await conn.fetchrow(self._horizon, tenant)  # $1 tenant_id
                    if horizon is not None and after < Cursor(int(horizon["xact"]), horizon["id"]):
                        raise CursorExpired()
                rows = await conn.fetch(
                    self._read,
                    tenant,               # $1 tenant_id
                    source,               # $2 source, or None for every source
                    str(position.xact),   # $3 after xact
                    position.id,          # $4 after id
                    limit,                # $5 limit
                )
        return [_event(row) for row in rows]

    async def horizon_lag(self) -> float:
        with translated(self._retry_after, self._count_error):
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                return float(await conn.fetchval(self._horizon_lag))

    async def oldest_event_age(self) -> float | None:
        with translated(self._retry_after, self._count_error):
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                age = await conn.fetchval(self._oldest_age)
        return None if age is None else float(age)


async def export_events(
    conn: asyncpg.Connection, queries: Queries, tenant: str, source: str | None,
    since: datetime | None, until: datetime | None, *, prefetch: int = 1000,
) -> AsyncIterator[StoredEvent]:
    """Every matching event, streamed through a server-side cursor (memory stays flat).

    The cursor lives in a read-only transaction, which takes no xid: a long
    export delays nobody's delivery.
    """
    async with conn.transaction(readonly=True):
        cursor = conn.cursor(
            queries.sql("export_events"),
            tenant,  # $1 tenant_id
            source,  # $2 source, or None
            since,   # $3 since, or None
            until,   # $4 until, or None
            prefetch=prefetch,
        )
        async for row in cursor:
            yield _event(row)
