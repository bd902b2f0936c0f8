"""``codex-ingest smoke`` run as a real command line against real services:
it passes on a live serve, and fails naming the step on a wrong secret, a
closed port, a port that never answers, and a service whose database is down.
Against a service with a strict sources file, it signs with the declared
hmac-sha256 source's own secret, and refuses up front what it cannot sign."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bench.local import free_port
from codex_ingest.storage import migrations
from tests import pg
from tests.helpers import SECRET
from tests.live import Live, serve
from tests.cli import run_cli

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


# --- a service with a strict sources file (--sources / CODEX_SOURCES) ---------------

STRICT_SOURCES = """
strict_sources = true

[sources.smoke]
scheme = "hmac-sha256"
secrets = ["env:SMOKE_SECRET", "smoke-old-secret-0123456789"]

[sources.shop]
scheme = "shopify"
secrets = ["env:SHOP_SECRET"]
"""
SMOKE_SECRET = "smoke-secret-from-env-0123456789"
SHOP_SECRET = "shop-secret-from-env-0123456789"


@pytest.fixture(scope="module")
def strict_service(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Live, Path]]:
    sources = tmp_path_factory.mktemp("strict-sources") / "sources.toml"
    sources.write_text(STRICT_SOURCES)
    with serve(database_url, CODEX_SOURCES=str(sources), SMOKE_SECRET=SMOKE_SECRET, SHOP_SECRET=SHOP_SECRET) as service:
        yield service, sources


def smoke_with(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """python -m codex_ingest smoke with exactly ``env`` (no WEBHOOK_SECRET unless given)."""
    return run_cli("smoke", "--url", url, *args, env=env, timeout=60)


def assert_refused(result: subprocess.CompletedProcess[str], *details: str) -> str:
    """Exit 2 with one line on stderr, before any step ran; no secret printed."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("codex-ingest smoke: error: "), result.stderr
    for detail in details:
        assert detail in lines[0], lines[0]
    for secret in (SMOKE_SECRET, SHOP_SECRET, "smoke-old-secret-0123456789", SECRET):
        assert secret not in result.stderr
    return lines[0]


def test_signs_with_the_declared_sources_own_secret_on_a_strict_service(strict_service, database_url: str) -> None:
    service, sources = strict_service
    # Only the smoke source's variable: the shop's is not needed (nor WEBHOOK_SECRET).
    result = smoke_with(service.url, "--sources", str(sources), SMOKE_SECRET=SMOKE_SECRET)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = step_lines(result)
    assert all(status_of(line) == "ok" for line in lines.values()), result.stdout
    assert "201 accepted" in lines["event"] and "source smoke" in lines["event"]
    assert "401 invalid_signature" in lines["bad-signature"]
    assert SMOKE_SECRET not in result.stdout + result.stderr

    # CODEX_SOURCES is the default, as for serve.
    by_env = smoke_with(service.url, "--tenant", "smoke-env", CODEX_SOURCES=str(sources), SMOKE_SECRET=SMOKE_SECRET)
    assert by_env.returncode == 0, by_env.stdout + by_env.stderr
    assert SMOKE_SECRET not in by_env.stdout + by_env.stderr
    with psycopg.connect(database_url) as conn:
        stored = conn.execute("SELECT count(*) FROM events WHERE tenant_id IN ('smoke-check', 'smoke-env')"
                              " AND source = 'smoke'").fetchone()
    assert stored is not None and stored[0] >= 2

    # Without the file, smoke signs with WEBHOOK_SECRET: the declared source refuses
    # that signature, and an undeclared one is 404 under strict_sources.
    assert_fails_at(smoke_with(service.url, WEBHOOK_SECRET=SECRET), "event", "401 invalid_signature")
    assert_fails_at(smoke_with(service.url, "--source", "nowhere", WEBHOOK_SECRET=SECRET), "event", "404 unknown_source")


def test_refuses_a_provider_source_up_front_naming_what_to_declare(strict_service) -> None:
    service, sources = strict_service
    line = assert_refused(
        smoke_with(service.url, "--sources", str(sources), "--source", "shop", SHOP_SECRET=SHOP_SECRET),
        "--source shop", "'shopify'", 'scheme = "hmac-sha256"', '[sources.smoke]', "env:SMOKE_SECRET",
    )
    print(line)
    # Its secret's variable unset changes nothing: a provider's secret is never read.
    assert_refused(smoke_with(service.url, "--sources", str(sources), "--source", "shop", WEBHOOK_SECRET=SECRET),
                   "'shopify'")


def test_refuses_an_undeclared_source_under_strict_sources_up_front(strict_service) -> None:
    service, sources = strict_service
    line = assert_refused(
        smoke_with(service.url, "--source", "nowhere", CODEX_SOURCES=str(sources), WEBHOOK_SECRET=SECRET),
        "--source nowhere", "not declared", "strict_sources = true", "[sources.smoke]",
    )
    print(line)


def test_a_sources_file_it_cannot_use_is_one_line(strict_service, tmp_path: Path) -> None:
    service, sources = strict_service
    assert_refused(smoke_with(service.url, "--sources", str(sources)), "--sources", "SMOKE_SECRET", "unset or empty")
    assert_refused(smoke_with(service.url, "--sources", str(tmp_path / "missing.toml"), WEBHOOK_SECRET=SECRET),
                   "--sources cannot read")
    assert_refused(smoke_with(service.url, CODEX_SOURCES=str(tmp_path / "missing.toml"), WEBHOOK_SECRET=SECRET),
                   "CODEX_SOURCES cannot read")
