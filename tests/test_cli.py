"""The codex-ingest command: configuration errors, --help, and a real serve."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.local import free_port
from codex_ingest.settings import MIGRATE_OPTIONS, SERVE_OPTIONS
from tests.helpers import SECRET, sign

ROOT = Path(__file__).resolve().parent.parent
BASE_ENV = {k: v for k, v in os.environ.items() if k not in {o.env for o in SERVE_OPTIONS}}


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "codex_ingest", *args],
        env={**BASE_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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




def post(port: int, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/pos/clover/ingest",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "X-Tenant-Id": "m-1", "X-Signature": sign(body)},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60, output: Callable[[], str] | None = None) -> None:
    """Until /healthz answers 200; if serve exits first, fail with what it printed
    (its stderr, or ``output()`` when it writes elsewhere)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            printed = output() if output is not None else (proc.stderr.read() if proc.stderr else "")
            raise AssertionError(f"serve exited early: {printed}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("serve did not become healthy")


def start_serve(data_dir: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "codex_ingest", "serve", "--data-dir", str(data_dir), "--port", str(port)],
        env={**BASE_ENV, "WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "DEBUG"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


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
