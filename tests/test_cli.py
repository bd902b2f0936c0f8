"""The codex-ingest command: configuration errors, --help, and a real serve."""

from __future__ import annotations

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
