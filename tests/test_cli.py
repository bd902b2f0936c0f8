"""The codex-ingest command: configuration errors, --help, and a real serve."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench.local import free_port
from codex_ingest.settings import MIGRATE_OPTIONS, SERVE_OPTIONS
from tests.cli import ROOT, post, run_cli, start_serve, stop, wait_healthy
from tests.helpers import SECRET



def test_serve_without_webhook_secret_refuses_in_one_line() -> None:
    result = run_cli("serve")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "WEBHOOK_SECRET" in lines[0]


@pytest.mark.parametrize(
    "env, args, names",
    [
        ({"PORT": "eighty"}, [], "PORT"),
        ({"PORT": "70000"}, [], "PORT"),
        ({"DB_POOL_MAX": "0"}, [], "DB_POOL_MAX"),
        ({"DB_POOL_MIN": "9", "DB_POOL_MAX": "2"}, [], "DB_POOL_MIN"),
        ({"MAX_BODY_BYTES": "-1"}, [], "MAX_BODY_BYTES"),
        ({"LOG_LEVEL": "LOUD"}, [], "LOG_LEVEL"),
        ({"ACCESS_LOG": "maybe"}, [], "ACCESS_LOG"),
        ({"DB_COMMAND_TIMEOUT": "0"}, [], "DB_COMMAND_TIMEOUT"),
        ({"DB_WRITE_TIMEOUT": "0"}, [], "DB_WRITE_TIMEOUT"),
        ({"SHUTDOWN_GRACE_SECONDS": "-1"}, [], "SHUTDOWN_GRACE_SECONDS"),
        ({}, ["--shutdown-grace-seconds", "soon"], "--shutdown-grace-seconds"),
        ({"DATABASE_URL": "mysql://app:hunter2@db/x"}, [], "DATABASE_URL"),
        ({}, ["--port", "x"], "--port"),
        ({}, ["--bogus"], "--bogus"),
        ({"WEBHOOK_SECRET": ""}, [], "WEBHOOK_SECRET"),
    ],
)
def test_bad_values_exit_2_with_one_clear_line(env: dict[str, str], args: list[str], names: str) -> None:
    result = run_cli("serve", *args, env={"WEBHOOK_SECRET": "s", **env})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert names in lines[0]
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr


def test_flag_wins_over_environment() -> None:
    # A bad PORT in the environment does not matter when --port is given.
    result = run_cli("serve", "--port", "x", env={"WEBHOOK_SECRET": "s", "PORT": "1"})
    assert "--port" in result.stderr


@pytest.mark.parametrize("command, options", [(["serve"], SERVE_OPTIONS), (["migrate", "apply"], MIGRATE_OPTIONS)])
def test_help_lists_every_option_and_its_variable(command: list[str], options) -> None:
    result = run_cli(*command, "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option in options:
        assert option.flag in text
        assert f"env {option.env}" in text


def test_env_example_lists_every_variable() -> None:
    names = {line.split("=", 1)[0].lstrip("# ").strip() for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line}
    assert {o.env for o in SERVE_OPTIONS} <= names




def test_serve_on_embedded_postgres_keeps_data_across_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "state" / "pgdata"
    port = free_port()
    body = b'{"objectId":"O:1","type":"CREATE","ts":1}'

    first = start_serve(data_dir, port)
    try:
        wait_healthy(port, first)
        status, doc = post(port, body)
        assert status == 201
        event_id = doc["event_id"]

        # A second serve on the same data directory and port: reuses the
        # database server, cannot take the port, says so, exits non-zero.
        second = run_cli("serve", "--data-dir", str(data_dir), "--port", str(port), env={"WEBHOOK_SECRET": SECRET})
        assert second.returncode == 1
        assert "cannot listen" in second.stderr and "address already in use" in second.stderr.lower()
        assert "Traceback" not in second.stderr
        assert post(port, body)[0] == 200  # the first one still serves
    finally:
        code, log = stop(first)
    assert code == 0
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    messages = [e["msg"] for e in entries]
    assert "serving" in messages and "stopped" in messages
    assert SECRET not in log

    again = start_serve(data_dir, port)
    try:
        wait_healthy(port, again)
        status, doc = post(port, body)
    finally:
        code, _ = stop(again)
    assert code == 0
    assert status == 200
    assert doc["event_id"] == event_id


# -- export --all-tenants --------------------------------------------------------------------------

# (tenant, source, key, xact) in id order. The delivery order, (xact, id), is
# neither the id order, nor by tenant, nor the xacts' text order ('100' < '99').
EXPORTED_ROWS = [
    ("shop-b", "orders", "k-1", "300"),
    ("shop-a", "orders", "k-2", "100"),
    ("shop-c", "refunds", "k-3", "200"),
    ("shop-a", "refunds", "k-4", "300"),
    ("shop-b", "orders", "k-5", "99"),
]


async def test_export_all_tenants_writes_every_tenants_events_in_delivery_order(db, database_url: str) -> None:
    for n, (tenant, source, key, xact) in enumerate(EXPORTED_ROWS, start=1):
        await db.execute(
            "INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, content_type, xact)"
            " VALUES ($1, $2, $3, $4, $5, 'application/json', $6::text::xid8)",
            tenant, source, key, bytes(32), b'{"n":%d}' % n, xact)
    order = [(r["tenant_id"], r["idempotency_key"]) for r in await db.fetch("SELECT * FROM events ORDER BY xact, id")]
    assert order == [("shop-b", "k-5"), ("shop-a", "k-2"), ("shop-c", "k-3"), ("shop-b", "k-1"), ("shop-a", "k-4")]

    result = await asyncio.to_thread(run_cli, "export", "--all-tenants", "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["tenant_id"], e["idempotency_key"]) for e in lines] == order
    assert [e["event_id"] for e in lines] == [5, 2, 3, 1, 4]
    assert set(lines[0]) == {"event_id", "tenant_id", "source", "idempotency_key", "received_at", "content_type",
                             "headers", "body_base64"}

    refunds = await asyncio.to_thread(run_cli, "export", "--all-tenants", "--source", "refunds",
                                      "--database-url", database_url)
    assert refunds.returncode == 0, refunds.stderr
    assert [(e["tenant_id"], e["idempotency_key"]) for e in map(json.loads, refunds.stdout.splitlines())] == \
        [("shop-c", "k-3"), ("shop-a", "k-4")]


@pytest.mark.parametrize("whose, said", [
    (["--tenant", "shop-a", "--all-tenants"], "not allowed with"),
    ([], "one of the arguments --tenant --all-tenants is required"),
])
def test_export_takes_exactly_one_of_tenant_and_all_tenants(whose: list[str], said: str) -> None:
    result = run_cli("export", *whose, "--database-url", "postgresql://unused@127.0.0.1:1/x")
    assert result.returncode == 2
    assert said in result.stderr, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
