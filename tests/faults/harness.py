"""Helpers of the fault tests: start services, hold an event's key, and wait for things."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import asyncpg

from bench.faults import SOURCE, SignedLoad, status_counts, stored_copies
from bench.service import Service
from bench.local import free_port
from codex_ingest.storage.queries import load_queries
from tests.helpers import SECRET


@contextmanager
def service_factory(log_dir: Path, **base_env: str) -> Iterator[Callable[..., Service]]:
    """Makes ``codex-ingest serve`` subprocesses (bench/service.Service) on free
    ports, each logging to a file of its own; all are cleaned up on exit."""
    services: list[Service] = []

    def make(database_url: str, workers: int, **env: str) -> Service:
        service = Service(
            database_url, free_port(), SECRET, log_dir / f"serve-{len(services)}.log", workers=workers,
            env={"DB_POOL_MAX": "4", **base_env, **env},
        )
        services.append(service)
        return service

    try:
        yield make
    finally:
        for service in services:
            service.cleanup()


@asynccontextmanager
async def key_held(database_url: str, load: SignedLoad, n: int) -> AsyncIterator[asyncpg.transaction.Transaction]:
    """Another writer inserts event n, uncommitted: the service's INSERT of it waits on the
    lock until the transaction yielded here commits or rolls back (rolled back on exit if open)."""
    conn = await asyncpg.connect(database_url)
    try:
        tx = conn.transaction()
        await tx.start()
        body, headers = load.request(n)
        await conn.fetchrow(
            load_queries().sql("insert_event"),
            load.tenant,                      # $1 tenant_id
            SOURCE,                           # $2 source
            headers["Idempotency-Key"],       # $3 idempotency_key
            hashlib.sha256(body).digest(),    # $4 body_sha256
            body,                             # $5 body
            "application/json",               # $6 content_type
        )
        yield tx
    finally:
        await conn.close()  # an open transaction rolls back


async def writes_waiting(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(load_queries().sql("writes_waiting_on_locks")))
    finally:
        await conn.close()


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for a condition; fail saying what never happened."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def until_waiting(database_url: str, count: int = 1, timeout: float = 30.0) -> None:
    """Wait until the service has ``count`` writes blocked on a lock."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await writes_waiting(database_url) < count:
        if loop.time() > deadline:
            raise AssertionError("the service's write never reached the held key")
        await asyncio.sleep(0.05)





async def resend_settles(load: SignedLoad, url: str) -> None:
    """Resending every unacknowledged event gets a 2xx and leaves one row per key.

    A 503 or a lost answer promises nothing either way: a write cut off by a
    timeout, an outage or a crash may have committed (a batch that won its
    race with its own cancellation, events still queued when their requests
    gave up). A key already stored must be answered 200; the others 201, or
    200 if a late write landed in between.
    """
    stored_before = set(await stored_copies(url, load.tenant))
    resent = await load.resend(load.unacknowledged)
    assert all(a.status in (200, 201) for a in resent), status_counts(resent)
    assert all(a.status == 200 for a in resent if a.key in stored_before), status_counts(resent)
    copies = await stored_copies(url, load.tenant)
    assert set(copies) == load.sent_keys and set(copies.values()) == {1}
