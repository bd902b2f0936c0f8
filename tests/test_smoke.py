"""``codex-ingest smoke`` run as a real command line against real services:
it passes on a live serve, and fails naming the step on a wrong secret, a
closed port, a port that never answers, and a service whose database is down."""

from __future__ import annotations

import socket
import subprocess

import psycopg

from bench.local import free_port
from codex_ingest.storage import migrations
from tests import pg
from tests.helpers import SECRET
from tests.live import Live, serve
from tests.test_cli import run_cli

STEPS = ["healthz", "readyz", "event", "replay", "bad-signature", "metrics"]


def smoke(url: str, *args: str, secret: str | None = SECRET, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """python -m codex_ingest smoke, the secret in WEBHOOK_SECRET (as an operator should pass it)."""
    env = {"WEBHOOK_SECRET": secret} if secret is not None else {}
    return run_cli("smoke", "--url", url, *args, env=env, timeout=timeout)


def step_lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Each step's line, by step name; asserts there is one per step, in order, then a verdict."""
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[:-1]] == STEPS, result.stdout + result.stderr
    return {line.split()[0]: line for line in lines[:-1]}


def status_of(line: str) -> str:
    return line.split()[1]


def assert_fails_at(result: subprocess.CompletedProcess[str], step: str, *details: str) -> dict[str, str]:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = step_lines(result)
    assert status_of(lines[step]) == "FAIL", lines[step]
    for detail in details:
        assert detail in lines[step], lines[step]
    verdict = result.stdout.strip().splitlines()[-1]
    assert verdict.startswith("FAIL: ") and step in verdict, verdict
    assert SECRET not in result.stdout + result.stderr
    return lines


def test_passes_against_a_live_service_and_stores_one_event_per_run(live: Live, database_url: str) -> None:
    first = smoke(live.url)
    print(first.stdout)  # shown with -s: what an operator sees
    assert first.returncode == 0, first.stdout + first.stderr
    lines = step_lines(first)
    assert all(status_of(line) == "ok" for line in lines.values()), first.stdout
    assert first.stdout.strip().splitlines()[-1].startswith("PASS: 6/6")
    assert "200 ok" in lines["healthz"] and "200 ready" in lines["readyz"]
    assert "201 accepted" in lines["event"] and "Idempotent-Replayed: true" in lines["replay"]
    assert "401 invalid_signature" in lines["bad-signature"]
    assert "codex_ingest_events_total" in lines["metrics"]
    assert SECRET not in first.stdout + first.stderr

    # A second run, the secret as a flag this time, uses a new key: 201 again, not 200.
    second = run_cli("smoke", "--url", live.url + "/", "--secret", SECRET, "--tenant", "smoke-2", "--source", "smoke-b")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "201 accepted" in step_lines(second)["event"]
    assert SECRET not in second.stdout + second.stderr

    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT tenant_id, source, idempotency_key FROM events WHERE tenant_id IN ('smoke-check', 'smoke-2')"
            " ORDER BY id"
        ).fetchall()
    # Only the signed event of each run is stored: not the replay, not the wrongly signed one.
    assert [(t, s) for t, s, _ in rows][-2:] == [("smoke-check", "smoke"), ("smoke-2", "smoke-b")]
    assert rows[-1][2] != rows[-2][2] and all(k.startswith("smoke-") for _, _, k in rows)


def test_wrong_secret_fails_at_the_event(live: Live) -> None:
    result = smoke(live.url, secret="not-the-secret")
    print(result.stdout)
    lines = assert_fails_at(result, "event", "401 invalid_signature, expected 201")
    assert status_of(lines["healthz"]) == status_of(lines["readyz"]) == "ok"
    assert "not run" in lines["replay"]
    assert "not-the-secret" not in result.stdout + result.stderr


def test_closed_port_fails_at_healthz_with_connection_refused() -> None:
    result = smoke(f"http://127.0.0.1:{free_port()}", timeout=30)
    lines = assert_fails_at(result, "healthz", "connection refused")
    assert all("not run" in lines[step] for step in STEPS[1:])


def test_a_port_that_never_answers_fails_after_the_timeout() -> None:
    # Listening, never accepting: the kernel completes the handshake, no HTTP answer ever comes.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        result = smoke(url, "--timeout", "0.5", timeout=30)
    assert_fails_at(result, "healthz", "no answer within 0.5 s")


def test_missing_secret_is_a_usage_error() -> None:
    result = smoke("http://127.0.0.1:1", secret=None)
    assert result.returncode == 2
    assert result.stderr.strip() == "codex-ingest smoke: error: --secret or WEBHOOK_SECRET is required"


def test_service_whose_database_is_down_fails_at_readyz_and_event(own_server: pg.EmbeddedServer) -> None:
    url = own_server.url("postgres")
    migrations.apply_all(url)
    with serve(url, DB_CONNECT_TIMEOUT="1", DB_COMMAND_TIMEOUT="1", DB_WRITE_TIMEOUT="2") as service:
        assert smoke(service.url).returncode == 0  # up: passes
        own_server.stop("immediate")
        result = smoke(service.url)
    print(result.stdout)
    lines = assert_fails_at(result, "readyz", "503 unavailable, expected 200")
    assert status_of(lines["healthz"]) == "ok"
    assert status_of(lines["event"]) == "FAIL" and "503 database_unavailable" in lines["event"], lines["event"]
    assert "event" in result.stdout.strip().splitlines()[-1]
