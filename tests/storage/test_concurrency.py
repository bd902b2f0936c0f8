"""Exactly once under concurrency, including the late-commit race."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable

import asyncpg
from aiohttp.test_utils import TestClient

from codex_ingest.storage.queries import load_queries
from tests.helpers import headers, payload

URL = "/pos/square/ingest"


@contextlib.asynccontextmanager
async def key_held_open(database_url: str, key: str, body: bytes) -> AsyncIterator[tuple[asyncpg.Record, Callable]]:
    """Insert the event in a transaction left open; yields (row, finish) where
    ``await finish(commit)`` commits or rolls it back."""
    conn = await asyncpg.connect(database_url)
    try:
        tx = conn.transaction()
        await tx.start()
        row = await conn.fetchrow(
            load_queries().sql("insert_event"),
            "tenant-1", "square", key, hashlib.sha256(body).digest(), body, "application/json",
        )

        async def finish(commit: bool) -> None:
            await (tx.commit() if commit else tx.rollback())

        yield row, finish
    finally:
        await conn.close()


async def test_simultaneous_posts_of_one_new_event_give_one_201(client: TestClient, db) -> None:
    body = payload("square-payment-updated")
    n = 24
    answers = await asyncio.gather(*(client.post(URL, data=body, headers=headers(body)) for _ in range(n)))
    statuses = sorted(r.status for r in answers)
    assert statuses == [200] * (n - 1) + [201]
    ids = {(await r.json())["event_id"] for r in answers}
    assert len(ids) == 1
    assert await db.fetchval("SELECT count(*) FROM events") == 1


async def test_duplicate_waits_for_an_original_that_commits_late(client: TestClient, db, database_url: str) -> None:
    """The original's transaction is still open when the duplicate's INSERT
    starts; the INSERT waits on the unique index, and once the original
    commits the duplicate must find it and answer 200 with its id."""
    body = b'{"late":"original"}'
    key = "late-commit-1"
    async with key_held_open(database_url, key, body) as (row, finish):
        duplicate = asyncio.create_task(
            client.post(URL, data=body, headers=headers(body, **{"Idempotency-Key": key}))
        )
        # Wait until the duplicate's INSERT is blocked on the original's row lock.
        for _ in range(200):
            waiting = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            if waiting:
                break
            await asyncio.sleep(0.02)
        assert waiting == 1, "the duplicate never blocked on the original"
        assert not duplicate.done()
        await finish(True)
        resp = await asyncio.wait_for(duplicate, 10)
    assert resp.status == 200
    assert (await resp.json())["event_id"] == row["id"]
    assert await db.fetchval("SELECT count(*) FROM events") == 1


async def test_waiting_post_stores_the_event_when_the_original_rolls_back(
    client: TestClient, db, database_url: str
) -> None:
    body = b'{"late":"aborted"}'
    key = "late-abort-1"
    async with key_held_open(database_url, key, body) as (_, finish):
        pending = asyncio.create_task(client.post(URL, data=body, headers=headers(body, **{"Idempotency-Key": key})))
        await asyncio.sleep(0.3)
        assert not pending.done()
        await finish(False)
        resp = await asyncio.wait_for(pending, 10)
    assert resp.status == 201
    stored_id = await db.fetchval("SELECT id FROM events WHERE idempotency_key = $1", key)
    assert (await resp.json())["event_id"] == stored_id
