"""Closing the delivery engine ends every one of its tasks, whatever they were
doing: a worker that shuts down (or a test's teardown) must never wait forever."""

from __future__ import annotations

import asyncio

import asyncpg

from codex_ingest.delivery.config import parse_destinations
from codex_ingest.delivery.engine import DeliveryEngine
from codex_ingest.intake.sources import parse_sources
from codex_ingest.storage.queries import load_queries
from tests.delivery.test_engine import destination_toml
from tests.helpers import until


async def test_close_ends_an_idle_sender_woken_at_the_same_moment(database_url: str, db) -> None:
    """A sender idles waiting for work with a deadline. When work arrives in the same turn of the
    loop as the close's cancellation, the cancellation must still end it: asyncio.wait_for on
    Python 3.11 returned the work instead and the sender ran on, so close() never returned."""
    destinations = parse_sources(destination_toml("backend", "http://127.0.0.1:9/hook"), {},
                                 destinations=parse_destinations).destinations
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        engine = DeliveryEngine(pool, load_queries(), destinations, watch=None, record=lambda *args: None)
        await engine.start()
        due = engine._destinations["backend"].due
        # Nothing to send: the sender idles on its event (it has a waiter then).
        await until(lambda: due._waiters, "the sender idle, waiting for work")
        due.set()  # work arrives...
        async with asyncio.timeout(30):  # a safety net only: closing takes milliseconds
            await engine.close()  # ...and the close cancels, in the same turn of the loop
    finally:
        await pool.close()
