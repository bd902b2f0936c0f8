"""Exactly once under concurrency, including the late-commit race."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient

from tests.db_faults import hold_key
from tests.helpers import headers, in_background, payload

# The write path: batched and direct writes must each keep these promises.
pytestmark = pytest.mark.both_write_paths

URL = "/pos/square/ingest"


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
    async with (hold_key(database_url, tenant="tenant-1", source="square", key=key, body=body) as held,
                in_background(client.post(URL, data=body, headers=headers(body, **{"Idempotency-Key": key}))) as duplicate):
        assert await held.until_blocked() == ["codex-ingest"]  # the service's INSERT, on the original's row
        assert not duplicate.done()
        await held.commit()
        resp = await asyncio.wait_for(duplicate, 10)
    assert resp.status == 200
    assert (await resp.json())["event_id"] == held.row["id"]
    assert await db.fetchval("SELECT count(*) FROM events") == 1


async def test_waiting_post_stores_the_event_when_the_original_rolls_back(
    client: TestClient, db, database_url: str
) -> None:
    body = b'{"late":"aborted"}'
    key = "late-abort-1"
    async with (hold_key(database_url, tenant="tenant-1", source="square", key=key, body=body) as held,
                in_background(client.post(URL, data=body, headers=headers(body, **{"Idempotency-Key": key}))) as pending):
        assert await held.until_blocked() == ["codex-ingest"]
        assert not pending.done()
        await held.rollback()
        resp = await asyncio.wait_for(pending, 10)
    assert resp.status == 201
    stored_id = await db.fetchval("SELECT id FROM events WHERE idempotency_key = $1", key)
    assert (await resp.json())["event_id"] == stored_id
