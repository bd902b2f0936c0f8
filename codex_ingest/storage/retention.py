"""Retention: events older than a window are deleted in short chunks.

Each chunk is one statement in its own short transaction (sql/retention.sql):
no long lock for ingest to wait on, and no long-running xid, which would
hold the read side's delivery horizon back. Each chunk also moves the purge
horizon of the tenants it touched, so a reader whose cursor is behind
deleted events gets 410 rather than a silent gap.

A key is deduplicated only while its event is retained: once purged, the
same (tenant, source, key) is accepted as new.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from codex_ingest.storage.queries import Queries

log = logging.getLogger("codex_ingest.retention")

CHUNK_ROWS = 5000
# After each chunk, rest as long as the chunk took: a purge of a large
# backlog then takes at most about half of the database's time, leaving the
# rest to ingest (a 1M-row purge run flat out multiplied ingest's p99 by 26
# on the 2-core bench machine: bench.read_side, purge).
REST_PER_WORK = 1.0


class Executor(Protocol):
    """An asyncpg Connection or Pool: each fetchval is its own implicit transaction."""

    async def fetchval(self, query: str, *args: object) -> object: ...


async def purge(
    db: Executor,
    queries: Queries,
    older_than: float,
    *,
    chunk_rows: int = CHUNK_ROWS,
    on_chunk: Callable[[int], None] | None = None,
    rest_per_work: float = REST_PER_WORK,
) -> int:
    """Delete every event received more than ``older_than`` seconds ago; the number deleted."""
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
    statement = queries.sql("purge_chunk")
    total = 0
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        deleted = int(await db.fetchval(statement, cutoff, chunk_rows))  # type: ignore[call-overload]  # $1 older than, $2 chunk rows
        total += deleted
        if on_chunk is not None and deleted:
            on_chunk(deleted)
        if deleted < chunk_rows:
            return total
        await asyncio.sleep((loop.time() - started) * rest_per_work)


def purge_interval(retention: float) -> float:
    """How often a worker purges: often enough that nothing outlives the window by much, at most once a minute."""
    return max(1.0, min(60.0, retention / 10))
