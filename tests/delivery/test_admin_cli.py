"""``codex-ingest destinations``: list, attempts, replay, retry, enable and
disable, run as a child process on the shared database (no service
running: the command works on the tables alone), the destinations read
from a sources file as serve reads them."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC
from pathlib import Path

import asyncpg
import pytest

from tests.cli import run_cli
from tests.delivery.test_engine import destination_toml

URL = "http://hooks.example.com:8443/codex/path-token-s3cret?key=q-s3cret"


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    path = tmp_path / "sources.toml"
    path.write_text(destination_toml("backend", URL, tenants='["shop-a", "shop-b"]')
                    + destination_toml("quiet", "https://quiet.example.com/hook"))
    return path


async def cli(database_url: str, sources: Path | None, *args: str):
    flags = ["--database-url", database_url] + (["--sources", str(sources)] if sources is not None else [])
    return await asyncio.to_thread(run_cli, "destinations", *args, *flags)


def lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


async def event(db: asyncpg.Connection, tenant: str, key: str) -> int:
    return await db.fetchval(
        "INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body)"
        " VALUES ($1, 'orders', $2, decode(repeat('00', 32), 'hex'), '{}') RETURNING id", tenant, key)


async def delivery(db: asyncpg.Connection, event_id: int, state: str, attempts: int = 0) -> None:
    await db.execute("INSERT INTO deliveries (destination, event_id, tenant_id, xact, state, attempts)"
                     " SELECT 'backend', id, tenant_id, xact, $2, $3 FROM events WHERE id = $1", event_id, state, attempts)


async def attempt(db: asyncpg.Connection, event_id: int, tenant: str, number: int, status: int | None) -> None:
    await db.execute(
        "INSERT INTO delivery_attempts (destination, event_id, tenant_id, attempt, status, error, duration_ms,"
        " response_excerpt) VALUES ('backend', $1, $2, $3, $4, $5, 12.5, $6)",
        event_id, tenant, number, status, None if status is not None and status < 300 else "HTTP 500",
        "<b>no</b>\x01")


async def test_list_prints_a_table_and_json_lines_of_every_declared_destination(db, database_url, sources) -> None:
    ids = [await event(db, "shop-a", f"k{n}") for n in range(4)]
    await db.execute("INSERT INTO destination_state (name, state, reason) VALUES ('backend', 'disabled',"
                     " '410 Gone from the destination')")
    await delivery(db, ids[0], "pending", attempts=1)
    await delivery(db, ids[1], "pending")
    await delivery(db, ids[2], "parked", attempts=3)
    await delivery(db, ids[3], "delivered", attempts=1)
    await attempt(db, ids[3], "shop-a", 1, 200)
    await attempt(db, ids[0], "shop-a", 1, 500)

    table = await cli(database_url, sources, "list")
    assert table.returncode == 0, table.stderr
    header, backend, quiet = table.stdout.splitlines()
    assert header.split()[:8] == ["NAME", "STATE", "LAG_EVENTS", "LAG_SECONDS", "IN_FLIGHT", "FAILING", "PARKED",
                                  "EXPIRED"]
    assert backend.split()[:3] == ["backend", "disabled", "2"]
    assert backend.split()[5:8] == ["1", "1", "0"]
    assert backend.endswith("http://hooks.example.com:8443  410 Gone from the destination")
    assert quiet.split()[:8] == ["quiet", "active", "0", "0.0", "0", "0", "0", "0"]
    assert quiet.split()[8:] == ["-", "-", "https://quiet.example.com", "-"]
    assert header.index("STATE") == backend.index("disabled") == quiet.index("active")  # aligned
    assert "s3cret" not in table.stdout + table.stderr

    as_json = await cli(database_url, sources, "list", "--json")
    assert as_json.returncode == 0, as_json.stderr
    backend_doc, quiet_doc = lines(as_json.stdout)
    assert {k: backend_doc[k] for k in ("name", "state", "reason", "url_origin", "lag_events", "in_flight",
                                        "failing", "parked", "expired")} == {
        "name": "backend", "state": "disabled", "reason": "410 Gone from the destination",
        "url_origin": "http://hooks.example.com:8443", "lag_events": 2, "in_flight": 0, "failing": 1, "parked": 1,
        "expired": 0}
    assert backend_doc["lag_seconds"] > 0 and backend_doc["scheduler_behind"] is True
    assert backend_doc["last_success_at"] is not None and backend_doc["last_failure_at"] is not None
    assert quiet_doc == {"name": "quiet", "state": "active", "reason": None, "url_origin": "https://quiet.example.com",
                         "lag_events": 0, "scheduler_behind": True, "lag_seconds": 0.0, "in_flight": 0, "failing": 0,
                         "parked": 0, "expired": 0, "last_success_at": None, "last_failure_at": None}


async def test_attempts_prints_json_lines_newest_first_page_by_page(db, database_url, sources) -> None:
    a, b = await event(db, "shop-a", "k1"), await event(db, "shop-b", "k2")
    for number, (event_id, tenant, status) in enumerate(
            [(a, "shop-a", 500), (a, "shop-a", None), (a, "shop-a", 200), (b, "shop-b", 500), (b, "shop-b", 204)], 1):
        await attempt(db, event_id, tenant, number, status)
    newest_first = [204, 500, 200, None, 500]

    seen, after = [], []
    for expected in ([204, 500], [200, None], [500]):
        page = await cli(database_url, sources, "attempts", "backend", "--limit", "2", *after)
        assert page.returncode == 0, page.stderr
        found = lines(page.stdout)
        assert [d["status"] for d in found] == expected
        seen += found
        more = [line for line in page.stderr.splitlines() if line.startswith("more: --after ")]
        after = ["--after", more[0].removeprefix("more: --after ")] if more else []
    assert after == []  # the last page says no more
    assert [d["status"] for d in seen] == newest_first
    assert seen[0] == {"event_id": b, "tenant_id": "shop-b", "attempt": 5, "status": 204, "error": None,
                       "duration_ms": 12.5, "response_excerpt": "<b>no</b>\x01", "at": seen[0]["at"]}

    delivered = await cli(database_url, sources, "attempts", "backend", "--status", "delivered")
    assert [d["status"] for d in lines(delivered.stdout)] == [204, 200]
    failed = await cli(database_url, sources, "attempts", "backend", "--status", "failed", "--tenant", "shop-a")
    assert [d["status"] for d in lines(failed.stdout)] == [None, 500]
    exact = await cli(database_url, sources, "attempts", "backend", "--status", "500")
    assert [(d["event_id"], d["status"]) for d in lines(exact.stdout)] == [(b, 500), (a, 500)]


async def test_replay_retry_disable_and_enable_change_the_tables(db, database_url, sources) -> None:
    a1, b1 = await event(db, "shop-a", "k1"), await event(db, "shop-b", "k2")
    c1 = await event(db, "shop-c", "k3")  # not the backend's
    await delivery(db, a1, "delivered", attempts=1)
    await delivery(db, b1, "parked", attempts=4)
    # No offset: the command takes it as UTC.
    since = (await db.fetchval("SELECT min(received_at) FROM events")).astimezone(UTC).replace(tzinfo=None)

    replay = await cli(database_url, sources, "replay", "backend", "--since", since.isoformat(), "--tenant", "shop-a")
    assert (replay.returncode, lines(replay.stdout)) == (0, [{"replayed": 1}]), replay.stderr
    row = await db.fetchrow("SELECT state, attempts FROM deliveries WHERE event_id = $1", a1)
    assert (row["state"], row["attempts"]) == ("pending", 0)
    assert await db.fetchval("SELECT state FROM deliveries WHERE event_id = $1", b1) == "parked"

    retry = await cli(database_url, sources, "retry", "backend")
    assert (retry.returncode, lines(retry.stdout)) == (0, [{"retried": 1}]), retry.stderr
    assert await db.fetchval("SELECT state FROM deliveries WHERE event_id = $1", b1) == "pending"

    everything = await cli(database_url, sources, "replay", "backend", "--since", "2000-01-01T00:00:00Z")
    assert lines(everything.stdout) == [{"replayed": 2}]  # shop-c is not the backend's
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE event_id = $1", c1) == 0

    await db.execute("UPDATE deliveries SET next_at = now() + interval '1 hour'")
    disable = await cli(database_url, sources, "disable", "backend")
    assert lines(disable.stdout) == [{"name": "backend", "state": "disabled"}], disable.stderr
    row = await db.fetchrow("SELECT state, reason FROM destination_state WHERE name = 'backend'")
    assert (row["state"], row["reason"]) == ("disabled", "disabled by an operator")
    enable = await cli(database_url, sources, "enable", "backend")
    assert lines(enable.stdout) == [{"name": "backend", "state": "active"}], enable.stderr
    assert await db.fetchval("SELECT state FROM destination_state WHERE name = 'backend'") == "active"
    assert await db.fetchval("SELECT bool_and(next_at <= now()) FROM deliveries") is True


@pytest.mark.parametrize(("args", "said"), [
    (["attempts", "nowhere"], "no destination 'nowhere'"),
    (["enable", "nowhere"], "no destination 'nowhere'"),
    (["attempts", "backend", "--status", "ok"], "status must be delivered"),
    (["attempts", "backend", "--limit", "0"], "limit must be a whole number"),
    (["attempts", "backend", "--after", "garbage"], "after must be a next_cursor"),
    (["attempts", "backend", "--tenant", "*"], "--tenant must match"),
    (["replay", "backend", "--since", "yesterday"], "since must be an ISO 8601 time"),
    (["replay", "backend", "--since", "2026-01-01T00:00:00Z", "--tenant", "a b"], "--tenant must match"),
])
async def test_a_bad_argument_exits_2_with_one_line_and_changes_nothing(db, database_url, sources, args, said) -> None:
    result = await cli(database_url, sources, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"codex-ingest destinations {args[0]}: error: ") and said in line, line
    assert await db.fetchval("SELECT count(*) FROM destination_state") == 0


async def test_without_a_sources_file_no_destination_is_declared(db, database_url) -> None:
    listed = await cli(database_url, None, "list", "--json")
    assert (listed.returncode, listed.stdout) == (0, "")
    named = await cli(database_url, None, "disable", "backend")
    assert named.returncode == 2 and "no sources file" in named.stderr
    assert await db.fetchval("SELECT count(*) FROM destination_state") == 0


async def test_an_unreachable_database_exits_1(sources) -> None:
    result = await cli("postgresql://unused@127.0.0.1:1/x", sources, "list")
    assert result.returncode == 1
    assert "destinations list failed" in result.stderr
