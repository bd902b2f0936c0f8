"""examples/consumer.py, run as a user runs it (a child process) against a
real ``codex-ingest serve`` with read tokens: every event once and in order,
resumed from its cursor file, re-read (never skipped) after a crash, a
clear exit on 401/403/410, a clean stop on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.local import free_port
from codex_ingest.storage import migrations
from tests import pg
from tests.cli import BASE_ENV
from tests.helpers import READ_TOKEN, SECRET, sign, wait_until
from tests.live import Live, serve

CONSUMER = Path(__file__).resolve().parent.parent / "examples" / "consumer.py"
OTHER_TENANT_TOKEN = "reader-token-someone-else-0123456789"
ENV = {k: v for k, v in BASE_ENV.items() if not k.startswith("CODEX_")}


@pytest.fixture(scope="module")
def service(pg_admin_url: str) -> Iterator[tuple[Live, str]]:
    """A serve of this module's own, on a database of its own (the 410 test purges it)."""
    name, url = pg.create_database(pg_admin_url)
    migrations.apply_all(url)
    try:
        # A short grace: a consumer stopped mid long-poll leaves its request waiting on the server.
        with serve(url, CODEX_API_TOKENS=f"{READ_TOKEN}=*;{OTHER_TENANT_TOKEN}=someone-else",
                   SHUTDOWN_GRACE_SECONDS="1") as live:
            yield live, url
    finally:
        pg.drop_database(pg_admin_url, name)


@pytest.fixture
def live(service: tuple[Live, str]) -> Live:
    return service[0]


@pytest.fixture
def tenant() -> str:
    """Each test reads a tenant of its own on the shared service."""
    return f"shop-{uuid.uuid4().hex[:12]}"


def post(live: Live, tenant: str, key: str) -> bytes:
    body = json.dumps({"type": "order.created", "order_id": key, "total": "12.50"}).encode()
    request = urllib.request.Request(f"{live.url}/pos/orders/ingest", data=body, headers={
        "Content-Type": "application/json", "X-Tenant-Id": tenant, "Idempotency-Key": key, "X-Signature": sign(body, SECRET)})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 201
    return body


def consume(live: Live, tenant: str, cursor: Path, *args: str, token: str | None = READ_TOKEN,
            program: list[str] | None = None) -> tuple[int, list[dict], str]:
    """Run the consumer until idle: (exit status, the events it printed, its stderr)."""
    env = ENV if token is None else {**ENV, "CODEX_READ_TOKEN": token}
    result = subprocess.run(
        [*(program or [sys.executable, str(CONSUMER)]), "--url", live.url, "--tenant", tenant,
         "--cursor-file", str(cursor), "--limit", "3", "--until-idle", *args],
        env=env, capture_output=True, text=True, timeout=30,
    )
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines()], result.stderr


def keys(printed: list[dict]) -> list[str]:
    return [e["idempotency_key"] for e in printed]


def test_each_event_once_in_order_then_only_the_new_ones(live: Live, tenant: str, tmp_path: Path) -> None:
    cursor = tmp_path / "cursor"
    bodies = {f"k{i}": post(live, tenant, f"k{i}") for i in range(7)}
    status, printed, stderr = consume(live, tenant, cursor)
    assert status == 0, stderr
    assert keys(printed) == [f"k{i}" for i in range(7)]  # 3 pages of --limit 3
    assert [e["body"] for e in printed] == [json.loads(bodies[k]) for k in keys(printed)]
    assert [e["event_id"] for e in printed] == sorted(e["event_id"] for e in printed)

    for i in range(7, 11):
        post(live, tenant, f"k{i}")
    status, printed, stderr = consume(live, tenant, cursor)
    assert (status, keys(printed)) == (0, [f"k{i}" for i in range(7, 11)]), stderr
    status, printed, stderr = consume(live, tenant, cursor)
    assert (status, printed) == (0, []), stderr
    assert [p.name for p in tmp_path.iterdir()] == ["cursor"]  # no temporary file left behind


def test_a_crash_mid_page_re_reads_that_page_and_skips_nothing(live: Live, tenant: str, tmp_path: Path) -> None:
    cursor = tmp_path / "cursor"
    for i in range(7):
        post(live, tenant, f"k{i}")
    # The consumer as a user would extend it: their handle() dies on k4, the second event of page 2.
    crashing = f"""
import sys
sys.path.insert(0, {str(CONSUMER.parent)!r})
import consumer
handle = consumer.handle
def crash_on_k4(event):
    if event["idempotency_key"] == "k4":
        raise SystemExit(3)
    handle(event)
consumer.handle = crash_on_k4
sys.exit(consumer.main())
"""
    status, printed, _ = consume(live, tenant, cursor, program=[sys.executable, "-c", crashing])
    assert (status, keys(printed)) == (3, ["k0", "k1", "k2", "k3"])
    status, printed, stderr = consume(live, tenant, cursor)
    assert (status, keys(printed)) == (0, ["k3", "k4", "k5", "k6"]), stderr  # page 2 again, whole


@pytest.mark.parametrize("token, code, says", [
    ("reader-token-not-configured-0123", 401, "CODEX_READ_TOKEN is not one of the service's CODEX_API_TOKENS"),
    (OTHER_TENANT_TOKEN, 403, "may not read tenant"),
])
def test_a_refused_token_exits_non_zero_saying_why(live: Live, tenant: str, tmp_path: Path, token: str, code: int,
                                                    says: str) -> None:
    post(live, tenant, "k0")
    status, printed, stderr = consume(live, tenant, tmp_path / "cursor", token=token)
    assert (status, printed) == (1, [])
    assert stderr.startswith(f"consumer: {code} ") and says in stderr, stderr
    assert token not in stderr
    assert not (tmp_path / "cursor").exists()


def test_no_token_is_a_usage_error(live: Live, tenant: str, tmp_path: Path) -> None:
    status, printed, stderr = consume(live, tenant, tmp_path / "cursor", token=None)
    assert (status, printed) == (2, [])
    assert "set CODEX_READ_TOKEN" in stderr


def test_a_cursor_behind_retention_exits_saying_what_to_do(service: tuple[Live, str], tenant: str,
                                                           tmp_path: Path) -> None:
    live, database_url = service
    cursor = tmp_path / "cursor"
    post(live, tenant, "k0")
    assert consume(live, tenant, cursor)[0] == 0
    post(live, tenant, "k1")  # never read: the purge takes it
    time.sleep(1.1)
    purge = subprocess.run([sys.executable, "-m", "codex_ingest", "purge", "--older-than", "1s"],
                           env={**ENV, "DATABASE_URL": database_url}, capture_output=True, text=True, timeout=60)
    assert purge.returncode == 0, purge.stderr
    status, printed, stderr = consume(live, tenant, cursor)
    assert (status, printed) == (1, [])
    assert "410 cursor_expired" in stderr and f"delete {cursor}" in stderr, stderr

    cursor.unlink()  # what the message says: go on from the oldest event kept
    post(live, tenant, "k2")
    status, printed, stderr = consume(live, tenant, cursor)
    assert (status, keys(printed)) == (0, ["k2"]), stderr


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no line within the time"
    return proc.stdout.readline()


@contextlib.contextmanager
def following(live_url: str, tenant: str, cursor: Path) -> Iterator[subprocess.Popen[str]]:
    """The consumer as it runs for real: no --until-idle, waiting at the head; killed if a test fails."""
    with subprocess.Popen(
        [sys.executable, str(CONSUMER), "--url", live_url, "--tenant", tenant, "--cursor-file", str(cursor)],
        env={**ENV, "CODEX_READ_TOKEN": READ_TOKEN}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


def readers_waiting(live: Live) -> float:
    """The service's codex_ingest_readers_waiting: reads parked at the head now."""
    with urllib.request.urlopen(f"{live.url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return next(s.value for family in text_string_to_metric_families(text) for s in family.samples
                if s.name == "codex_ingest_readers_waiting")


def read_until(stream: IO[str], marker: str, timeout: float) -> str:
    """What ``stream`` (a child's pipe) says up to and including ``marker``;
    fails with what it said if ``marker`` does not come within ``timeout``."""
    said = b""
    deadline = time.monotonic() + timeout
    while marker.encode() not in said:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(stream.fileno(), 4096) if ready else b""
        assert chunk, f"no {marker!r} within {timeout} s: {said.decode(errors='replace')!r}"
        said += chunk
    return said.decode(errors="replace")


def test_long_polls_then_stops_cleanly_on_sigterm(live: Live, tenant: str, tmp_path: Path) -> None:
    cursor = tmp_path / "cursor"
    # A consumer an earlier test stopped may have left its read waiting on the server (up to its wait=25).
    wait_until(lambda: readers_waiting(live) == 0, "earlier readers to leave the head", timeout=60)
    with following(live.url, tenant, cursor) as proc:
        wait_until(lambda: readers_waiting(live) == 1, "the consumer to wait at the head")
        post(live, tenant, "k0")
        # Woken by the write, not at its 25 s timeout: a bound far from both.
        assert json.loads(read_line(proc, 15))["idempotency_key"] == "k0"
        # Back in its wait (the read it was woken from has left the head; this is its next).
        wait_until(lambda: readers_waiting(live) == 1, "the consumer to wait at the head again")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0  # the long-poll is cut short, not waited out (25 s)
    assert cursor.read_text().strip()
    status, printed, stderr = consume(live, tenant, cursor)
    assert (status, printed) == (0, []), stderr


def test_retries_while_the_service_is_unreachable(tmp_path: Path) -> None:
    with following(f"http://127.0.0.1:{free_port()}", "shop-1", tmp_path / "cursor") as proc:
        assert proc.stderr is not None
        # Tries at 0, 1 and 3 s: after its second failure it says it waits 2 s, and keeps going.
        said = read_until(proc.stderr, "retrying in 2 s", timeout=30)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0  # stopped during its backoff
        stderr = said + proc.stderr.read()
    assert "retrying in 1 s" in stderr and "retrying in 2 s" in stderr, stderr
