"""The delivery engine end to end: events posted to the real app, delivered by
its engine to real receivers on 127.0.0.1 that verify every request with the
standardwebhooks library. Waits are for conditions, never for durations."""

from __future__ import annotations

import uuid
from dataclasses import replace

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from codex_ingest.delivery.config import parse_destinations
from codex_ingest.intake.sources import parse_sources
from codex_ingest.storage.queries import load_queries
from codex_ingest.web.app import create_app
from tests.delivery.receivers import error, fails_then, gone, hang, ok, receiver
from tests.helpers import headers, until

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of 24 bytes


def destination_toml(name: str, url: str, **keys: object) -> str:
    lines = [f"[destinations.{name}]", f'url = "{url}"', f'secrets = ["{SECRET}"]', "allow_private_network = true"]
    for key, value in keys.items():
        lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def delivering(aiohttp_client, settings, db):
    """A client of the app with these destinations (TOML), its engine running."""

    async def make(toml: str, **changes: object):
        table = parse_sources(toml, {}, destinations=parse_destinations)
        app = create_app(replace(settings, source_table=table, **changes))
        return await aiohttp_client(app)

    return make


async def post(client, n: int, tenant: str = "shop-a"):
    body = b'{"type":"order.created","n":%d}' % n
    resp = await client.post("/pos/orders/ingest", data=body,
                             headers=headers(body, tenant=tenant, **{"Idempotency-Key": f"k-{n}"}))
    assert resp.status == 201, await resp.text()
    return (await resp.json())["event_id"]


async def test_every_event_reaches_a_healthy_destination_once_verified(delivering, db) -> None:
    async with receiver(ok(), secret=SECRET) as hook:
        client = await delivering(destination_toml("backend", hook.url))
        ids = [await post(client, n, tenant=f"shop-{n % 3}") for n in range(20)]
        await hook.wait_for(20)
        assert not hook.unverified(), hook.summary()
        assert sorted(hook.verified_ids()) == sorted(f"evt_{i}" for i in ids)
        assert {a.header("x-tenant-id") for a in hook.arrivals} == {"shop-0", "shop-1", "shop-2"}
        await until(states(db, "backend", {"delivered": 20}), "every delivery recorded")
        # Counted just after it is recorded: wait for the count, not for a guessed moment.
        await until(_metric_is(client, "backend", "delivered", 20), "20 deliveries counted")


async def test_parked_and_disabled_show_in_the_gauges(delivering, db) -> None:
    async with receiver(error(500), secret=SECRET) as hook:
        client = await delivering(destination_toml("backend", hook.url, retry_schedule="[0.05]"))
        await post(client, 1)
        await until(states(db, "backend", {"parked": 1}), "the event parked")
        await until(_gauge(client, "codex_ingest_delivery_parked", "backend", 1.0), "the parked gauge at 1")
        await until(_metric_is(client, "backend", "parked", 1), "the parking counted")


async def test_a_failing_event_is_retried_with_the_same_webhook_id_and_then_delivered(delivering, db) -> None:
    async with receiver(fails_then(2, per="webhook-id"), secret=SECRET) as hook:
        client = await delivering(destination_toml("backend", hook.url, retry_schedule="[0.05, 0.05, 0.05]"))
        event_id = await post(client, 1)
        await until(states(db, "backend", {"delivered": 1}), "the event delivered after two failures")
        assert [a.webhook_id for a in hook.arrivals] == [f"evt_{event_id}"] * 3
        assert [a.status for a in hook.arrivals] == [500, 500, 200]
        attempts = await db.fetch("SELECT attempt, status FROM delivery_attempts ORDER BY id")
        assert [(r["attempt"], r["status"]) for r in attempts] == [(1, 500), (2, 500), (3, 200)]


async def test_past_the_last_retry_an_event_is_parked_and_the_next_is_not_held_back(delivering, db) -> None:
    async with receiver(error(500), secret=SECRET) as failing, receiver(ok(), secret=SECRET) as healthy:
        toml = (destination_toml("failing", failing.url, retry_schedule="[0.05]")
                + destination_toml("healthy", healthy.url))
        client = await delivering(toml)
        first = await post(client, 1)
        await until(states(db, "failing", {"parked": 1}), "the event parked after its last retry")
        second = await post(client, 2)
        await until(states(db, "failing", {"parked": 2}), "the next event tried (and parked) too")
        await healthy.wait_for(2)
        assert sorted(healthy.verified_ids()) == [f"evt_{first}", f"evt_{second}"]


async def test_a_hung_destination_does_not_hold_back_a_healthy_one(delivering, db) -> None:
    async with receiver(hang(), secret=SECRET) as hung, receiver(ok(), secret=SECRET) as healthy:
        toml = destination_toml("hung", hung.url, timeout_seconds=30) + destination_toml("healthy", healthy.url)
        client = await delivering(toml)
        ids = [await post(client, n) for n in range(10)]
        await healthy.wait_for(10)
        # Every healthy delivery arrived while the hung destination still held its requests open.
        assert hung.in_flight > 0
        assert sorted(healthy.verified_ids()) == sorted(f"evt_{i}" for i in ids)


async def test_410_gone_disables_the_destination(delivering, db) -> None:
    async with receiver(gone(), secret=SECRET) as hook:
        client = await delivering(destination_toml("backend", hook.url))
        await post(client, 1)
        await until(_destination_state(db, "backend", "disabled"), "the destination disabled by its 410")
        row = await db.fetchrow("SELECT state FROM deliveries WHERE destination = 'backend'")
        assert row["state"] == "pending"  # kept, to go out when an operator enables it again


async def test_loopback_is_refused_unless_the_destination_allows_private_networks(delivering, db) -> None:
    async with receiver(ok(), secret=SECRET) as hook:
        toml = destination_toml("backend", hook.url, retry_schedule="[0.05]").replace(
            "allow_private_network = true", "allow_private_network = false")
        client = await delivering(toml)
        await post(client, 1)
        await until(states(db, "backend", {"parked": 1}), "the refused delivery parked")
        assert hook.arrivals == []
        errors = [r["error"] for r in await db.fetch("SELECT error FROM delivery_attempts")]
        assert errors and all("127.0.0.1" in e for e in errors), errors


async def test_a_stale_lease_cannot_record_over_a_newer_one(db) -> None:
    sql = load_queries()
    await db.execute("INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body)"
                     " VALUES ('t', 's', 'k', decode(repeat('00', 32), 'hex'), '{}')")
    await db.execute(sql.sql("ensure_destination"), "d", None, None)
    scheduled = await db.fetchrow(sql.sql("schedule"), "d", "0", 0, None, None, 10)
    assert scheduled["scheduled"] == 1
    old, new = uuid.uuid4(), uuid.uuid4()
    assert len(await db.fetch(sql.sql("claim_parallel"), "d", old, 10, 30.0)) == 1
    await db.execute("UPDATE deliveries SET lease_until = now() - interval '1 second'")  # the old lease ran out
    assert len(await db.fetch(sql.sql("claim_parallel"), "d", new, 10, 30.0)) == 1

    async def record(token: uuid.UUID, state: str, status: int) -> list[int]:
        # $1 destination, $2 event ids, $3 tokens, $4 states, $5 next at, $6 statuses, $7 errors, $8 tenants,
        # $9 attempts, $10 ms, $11 excerpts
        rows = await db.fetch(sql.sql("record_results"), "d", [1], [token], [state], [None], [status], [None],
                              ["t"], [1], [12.5], [None])
        return [r["event_id"] for r in rows]

    assert await record(old, "delivered", 200) == []
    assert await record(new, "parked", 500) == [1]
    assert await db.fetchval("SELECT state FROM deliveries") == "parked"
    # Both attempts are logged, the stale one too.
    assert [r["status"] for r in await db.fetch("SELECT status FROM delivery_attempts ORDER BY id")] == [200, 500]


async def _labelled(client, name: str, **labels: str) -> float | None:
    text = await (await client.get("/metrics")).text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def _metric_is(client, destination: str, outcome: str, value: float):
    async def check() -> bool:
        return await _labelled(client, "codex_ingest_deliveries_total", destination=destination,
                               outcome=outcome) == value

    return check


def _gauge(client, name: str, destination: str, value: float):
    async def check() -> bool:
        return await _labelled(client, name, destination=destination) == value

    return check


def states(db: asyncpg.Connection, destination: str, expected: dict[str, int]):
    async def check() -> bool:
        rows = await db.fetch("SELECT state, count(*) AS n FROM deliveries WHERE destination = $1 GROUP BY state",
                              destination)
        return {r["state"]: r["n"] for r in rows} == expected

    return check


def _destination_state(db: asyncpg.Connection, name: str, state: str):
    async def check() -> bool:
        return await db.fetchval("SELECT state FROM destination_state WHERE name = $1", name) == state

    return check
