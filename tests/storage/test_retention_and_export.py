"""Retention (the purge command and the RETENTION setting) and export (NDJSON
on stdout), on real PostgreSQL, through the real command line."""

from __future__ import annotations

import asyncio
import base64
import json

import asyncpg
import pytest

from codex_ingest.settings import ReadToken
from tests.helpers import headers, metric_samples, until
from tests.cli import run_cli

INGEST = "/pos/square/ingest"


async def post(client, n: int, tenant: str = "shop-a", source: str = "square") -> bytes:
    body = b'{"type":"order.created","n":%d}' % n
    resp = await client.post(f"/pos/{source}/ingest", data=body, headers=headers(body, tenant=tenant))
    assert resp.status == 201, await resp.text()
    return body


async def age(db: asyncpg.Connection, days: int, where: str = "TRUE") -> None:
    await db.execute(f"UPDATE events SET received_at = now() - interval '{days} days' WHERE {where}")


async def test_purge_deletes_only_what_is_older_and_moves_each_tenants_horizon(client, db, database_url) -> None:
    for n in range(5):
        await post(client, n, tenant="shop-a" if n < 3 else "shop-b")
    await age(db, 10, "id IN (1, 2, 4)")
    result = await asyncio.to_thread(run_cli, "purge", "--older-than", "7d", "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    assert "deleted 3 event(s)" in result.stdout
    assert sorted(r["id"] for r in await db.fetch("SELECT id FROM events")) == [3, 5]
    horizons = {r["tenant_id"]: r["id"] for r in await db.fetch("SELECT tenant_id, id FROM purge_horizons")}
    assert horizons == {"shop-a": 2, "shop-b": 4}


async def test_purge_works_in_chunks_of_short_transactions(db, database_url) -> None:
    from codex_ingest.storage import retention
    from codex_ingest.storage.queries import load_queries

    await db.execute("""
        INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, received_at)
        SELECT 't', 's', 'k' || g, decode(repeat('00', 32), 'hex'), '{}', now() - interval '30 days'
        FROM generate_series(1, 2500) AS g
    """)
    chunks: list[int] = []
    deleted = await retention.purge(db, load_queries(), 86400, chunk_rows=1000, on_chunk=chunks.append)
    assert deleted == 2500 and chunks == [1000, 1000, 500]
    assert await db.fetchval("SELECT count(*) FROM events") == 0


@pytest.mark.parametrize("value", ["7", "-1d", "1w", "soon", "0s"])
def test_a_bad_duration_is_one_line_and_exit_2(value) -> None:
    result = run_cli("purge", "--older-than", value, "--database-url", "postgresql://unused@127.0.0.1:1/x")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "--older-than" in result.stderr


async def test_the_retention_setting_purges_in_the_background_and_reports_it(make_client, db) -> None:
    # 30 s of retention: a purge every 3 s (retention.purge_interval), the fresh event kept throughout.
    client = await make_client(retention=30.0, api_tokens=(ReadToken("retention-token-0123456789", None),))
    await post(client, 1)
    await post(client, 2)
    await age(db, 2, "id = 1")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while await db.fetchval("SELECT count(*) FROM events") != 1:
        assert loop.time() < deadline, "the background purge never ran"
        await asyncio.sleep(0.1)

    # The read-side gauges are refreshed every 5 s: until one refresh has seen
    # the purge, the gauge reads the purged event's two days (or 0 before any).
    async def refreshed() -> dict[str, float] | None:
        samples = await metric_samples(client)
        return samples if 0 < samples["codex_ingest_oldest_event_age_seconds"] < 60 else None

    samples = await until(refreshed, "the gauges to refresh")
    assert samples["codex_ingest_events_purged_total"] == 1.0
    assert samples["codex_ingest_read_horizon_lag_seconds"] >= 0


async def test_oldest_event_age_reports_the_age_of_the_oldest_stored_event(make_client, db) -> None:
    # Two days old, well inside a week of retention: kept, and the gauge must read its real age.
    client = await make_client(retention=7 * 86400.0)
    await post(client, 1)
    await post(client, 2)
    await age(db, 2, "id = 1")
    stored_age = await db.fetchval("SELECT extract(epoch FROM now() - received_at)::float8 FROM events WHERE id = 1")

    async def reads_its_age() -> float | None:
        gauge = (await metric_samples(client))["codex_ingest_oldest_event_age_seconds"]
        return gauge if abs(gauge - stored_age) < 60 else None

    await until(reads_its_age, "the oldest-event gauge to read the event's age")
    assert await db.fetchval("SELECT count(*) FROM events") == 2


async def test_without_retention_there_is_no_oldest_event_age(make_client, db, database_url) -> None:
    # Nothing is purged: the series must not exist (not even at 0), so
    # CodexIngestPurgeNotRunning cannot fire. Checked after the read side's
    # gauges (on with api_tokens) have been refreshed at least once: a
    # transaction holding an xid makes the refreshed horizon lag non-zero.
    client = await make_client(api_tokens=(ReadToken("no-retention-token-0123456789", None),))
    await post(client, 1)
    await age(db, 30, "id = 1")
    holder = await asyncpg.connect(database_url)
    try:
        await holder.execute("BEGIN")
        await holder.fetchval("SELECT pg_current_xact_id()")

        async def refreshed() -> bool:
            return (await metric_samples(client))["codex_ingest_read_horizon_lag_seconds"] > 0

        await until(refreshed, "the gauges to refresh")
        text = await (await client.get("/metrics")).text()
    finally:
        await holder.close()
    assert "codex_ingest_oldest_event_age_seconds" not in text
    assert "codex_ingest_events_purged_total" in text


async def test_horizon_lag_reports_a_long_transaction_holding_an_xid(make_client, db, database_url) -> None:
    client = await make_client(api_tokens=(ReadToken("lag-token-0123456789", None),))
    holder = await asyncpg.connect(database_url)
    try:
        await holder.execute("BEGIN")
        await holder.fetchval("SELECT pg_current_xact_id()")
        # The transaction ages and the gauges refresh every 5 s: wait for the
        # gauge to show an age only that transaction can have.
        async def lag() -> bool:
            return (await metric_samples(client))["codex_ingest_read_horizon_lag_seconds"] >= 1.0
        await until(lag, "the horizon lag to show the open transaction", timeout=60)
    finally:
        await holder.close()


async def test_export_writes_ndjson_in_the_read_shape_filtered_by_tenant_source_and_time(client, db, database_url) -> None:
    bodies = [await post(client, n, tenant="shop-a", source="square" if n != 2 else "toast") for n in range(4)]
    await post(client, 9, tenant="shop-b")
    await age(db, 3, "id = 1")
    result = await asyncio.to_thread(run_cli, "export", "--tenant", "shop-a", "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [base64.b64decode(e["body_base64"]) for e in lines] == bodies
    assert set(lines[0]) == {"event_id", "tenant_id", "source", "idempotency_key", "received_at", "content_type", "headers",
                             "body_base64"}
    assert result.stderr == ""  # no progress bar when stderr is not a terminal

    only_toast = await asyncio.to_thread(run_cli, "export", "--tenant", "shop-a", "--source", "toast", "--database-url", database_url)
    assert [json.loads(line)["source"] for line in only_toast.stdout.splitlines()] == ["toast"]
    recent = await asyncio.to_thread(
        run_cli, "export", "--tenant", "shop-a", "--since", "2000-01-01", "--until", "2999-01-01T00:00:00+00:00",
        "--database-url", database_url)
    assert len(recent.stdout.splitlines()) == 4
    last_day = await asyncio.to_thread(run_cli, "export", "--tenant", "shop-a", "--since",
                                       (await db.fetchval("SELECT (now() - interval '1 day')::text")),
                                       "--database-url", database_url)
    assert len(last_day.stdout.splitlines()) == 3


def test_export_refuses_a_bad_time_in_one_line() -> None:
    result = run_cli("export", "--tenant", "shop-a", "--since", "yesterday", "--database-url", "postgresql://unused@127.0.0.1:1/x")
    assert result.returncode == 2
    assert "--since" in result.stderr and len(result.stderr.strip().splitlines()) == 1
