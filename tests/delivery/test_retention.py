"""Retention and push delivery: an event the purge deletes before a
destination got it is never skipped silently. A pending or parked delivery
becomes expired; an event the destination's scheduler had not reached yet
gets an expired row; a delivered one's row goes with its event."""

from __future__ import annotations

import asyncpg

from codex_ingest.storage import retention
from codex_ingest.storage.queries import load_queries
from tests.delivery.receivers import error, hang, ok, receiver
from tests.delivery.test_engine import SECRET, delivering, destination_toml, post, states  # noqa: F401
from tests.helpers import until


async def purge_all(db) -> int:
    await db.execute("UPDATE events SET received_at = now() - interval '2 days'")
    return await retention.purge(db, load_queries(), older_than=86400)


async def test_a_pending_delivery_whose_event_is_purged_becomes_expired(delivering, db) -> None:
    async with receiver(error(500), secret=SECRET) as hook:
        client = await delivering(destination_toml("backend", hook.url, retry_schedule="[3600]"))
        await post(client, 1)
        await hook.wait_for(1)  # tried once; the next try is an hour away
        await until(states(db, "backend", {"pending": 1}), "the failed delivery pending its retry")
        assert await purge_all(db) == 1
        row = await db.fetchrow("SELECT state, last_error FROM deliveries WHERE destination = 'backend'")
        assert (row["state"], row["last_error"]) == ("expired", "deleted by retention before it was delivered")


async def test_a_delivery_purged_while_its_send_is_in_flight_stays_expired(delivering, db) -> None:
    """The purge takes the lease from a send in flight: the send's outcome, recorded after, is
    logged but cannot turn the row back to pending (an event that no longer exists)."""
    async with receiver(hang(), secret=SECRET) as hook:
        client = await delivering(destination_toml("backend", hook.url, timeout_seconds=1, retry_schedule="[3600]"))
        await post(client, 1)
        await hook.wait_for(1)  # the send is in flight: the receiver holds it until the timeout
        assert await purge_all(db) == 1

        async def attempt_logged():
            return await db.fetchval("SELECT error FROM delivery_attempts WHERE destination = 'backend'")

        assert await until(attempt_logged, "the timed-out attempt logged") == "no answer within 1 s"
        row = await db.fetchrow("SELECT state, last_error, lease_token FROM deliveries WHERE destination = 'backend'")
        assert (row["state"], row["last_error"], row["lease_token"]) == (
            "expired", "deleted by retention before it was delivered", None)


async def test_an_event_purged_before_it_was_scheduled_is_listed_expired(delivering, db, database_url) -> None:
    async with receiver(ok(), secret=SECRET) as hook:
        toml = destination_toml("backend", hook.url) + destination_toml("other", hook.url, tenants='["shop-z"]')
        client = await delivering(toml)
        holder = await asyncpg.connect(database_url)
        try:
            # Holding the destinations' rows keeps their schedulers off (they lock them SKIP LOCKED).
            async with holder.transaction():
                await holder.execute("SELECT 1 FROM destination_state FOR UPDATE")
                await post(client, 1, tenant="shop-a")
                assert await purge_all(db) == 1
        finally:
            await holder.close()
        rows = await db.fetch("SELECT destination, state, last_error FROM deliveries ORDER BY destination")
        # "other" takes shop-z only: the deleted shop-a event was never its to receive.
        assert [tuple(r) for r in rows] == [("backend", "expired", "deleted by retention before it was scheduled")]
        assert hook.arrivals == []


async def test_a_delivered_events_row_goes_with_it(delivering, db) -> None:
    async with receiver(ok(), secret=SECRET) as hook:
        client = await delivering(destination_toml("backend", hook.url))
        await post(client, 1)
        await until(states(db, "backend", {"delivered": 1}), "the event delivered")
        assert await purge_all(db) == 1
        assert await db.fetchval("SELECT count(*) FROM deliveries") == 0
