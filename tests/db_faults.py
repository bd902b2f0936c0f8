"""Faults the tests make in the real database: an event's key held by another
writer's open transaction, and a SQLSTATE raised from a trigger on the
service's INSERT. Both are async context managers that undo themselves
(transaction rolled back, trigger and function dropped) even when the test
fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from codex_ingest.storage.queries import load_queries

# The backends waiting on a lock that the holder's transaction holds (its
# row's unique-index entry, its transaction id): not any lock wait anywhere.
# Read on a connection of its own, outside any transaction: pg_stat_activity
# is a snapshot taken once per transaction.
_BLOCKED_BY = """
SELECT application_name FROM pg_stat_activity
WHERE $1 = ANY(pg_blocking_pids(pid)) AND wait_event_type = 'Lock'
ORDER BY pid
"""


@dataclass
class HeldKey:
    """An event inserted by another writer and not yet committed."""

    row: asyncpg.Record  # what insert_event returned: the row's id, among others
    _holder: asyncpg.Connection
    _tx: asyncpg.transaction.Transaction
    _observer: asyncpg.Connection

    async def commit(self) -> None:
        await self._tx.commit()

    async def rollback(self) -> None:
        await self._tx.rollback()

    async def waiters(self) -> list[str]:
        """The application_name of each backend now waiting on this transaction's locks."""
        rows = await self._observer.fetch(_BLOCKED_BY, self._holder.get_server_pid())
        return [r["application_name"] for r in rows]

    async def until_blocked(self, count: int = 1, timeout: float = 30.0) -> list[str]:
        """Wait until ``count`` backends wait on the held key (a write has really
        reached it and is blocked, not merely been sent); their application names."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(waiting := await self.waiters()) < count:
            if loop.time() > deadline:
                raise AssertionError(f"{count} write(s) never blocked on the held key within {timeout} s: {waiting}")
            await asyncio.sleep(0.02)
        return waiting


@asynccontextmanager
async def hold_key(
    database_url: str, *, tenant: str, source: str, key: str, body: bytes = b"{}",
    content_type: str = "application/json",
) -> AsyncIterator[HeldKey]:
    """Insert (tenant, source, key) in a transaction left open: the service's
    INSERT of that key waits on the lock until ``commit()`` or ``rollback()``.
    Still open on exit, the transaction is rolled back."""
    holder = await asyncpg.connect(database_url)
    observer: asyncpg.Connection | None = None
    try:
        observer = await asyncpg.connect(database_url)
        tx = holder.transaction()
        await tx.start()
        row = await holder.fetchrow(
            load_queries().sql("insert_event"),
            tenant,                         # $1 tenant_id
            source,                         # $2 source
            key,                            # $3 idempotency_key
            hashlib.sha256(body).digest(),  # $4 body_sha256
            body,                           # $5 body
            content_type,                   # $6 content_type
            None,                           # $7 headers: none kept
        )
        yield HeldKey(row, holder, tx, observer)
    finally:
        await holder.close()  # an open transaction rolls back with its session
        if observer is not None:
            await observer.close()


_SQLSTATE = re.compile(r"[0-9A-Z]{5}")


@asynccontextmanager
async def sqlstate_fault(db: asyncpg.Connection, sqlstate: str, *, key: str | None = None) -> AsyncIterator[None]:
    """Every INSERT into events raises ``sqlstate`` (only the row whose
    idempotency key is ``key``, when given; the others are stored) until the
    block ends. A real error from the real server, from a BEFORE INSERT
    trigger; the trigger and its function are dropped on exit."""
    if not _SQLSTATE.fullmatch(sqlstate):
        raise ValueError(f"not a SQLSTATE: {sqlstate!r}")
    # DDL takes no parameters: the server quotes the key itself.
    condition = "true" if key is None else "NEW.idempotency_key = " + await db.fetchval("SELECT quote_literal($1::text)", key)
    await db.execute(f"""
        CREATE OR REPLACE FUNCTION codex_test_fault() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF {condition} THEN RAISE EXCEPTION 'injected fault' USING ERRCODE = '{sqlstate}'; END IF;
            RETURN NEW;
        END $$;
        DROP TRIGGER IF EXISTS codex_test_fault ON events;
        CREATE TRIGGER codex_test_fault BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION codex_test_fault();
    """)
    try:
        yield
    finally:
        await db.execute("DROP TRIGGER IF EXISTS codex_test_fault ON events; DROP FUNCTION IF EXISTS codex_test_fault()")
