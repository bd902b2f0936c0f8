"""examples/consumer.py, run as a user runs it (a child process) against a
real ``codex-ingest serve`` with read tokens: the combined feed of every
tenant (its default) and one tenant's read, every event once and in order,
each routed to its topic's handler with its tenant (Shopify's topic from
X-Shopify-Topic, the generic source's from the body's "type"), resumed from
its cursor file (never one of the other kind of read), re-read (never
skipped) after a crash, a clear exit on 401/403/410, a clean stop on SIGTERM."""

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

import psycopg
from bench.local import free_port
from codex_ingest.storage import migrations
from tests import pg
from tests.cli import BASE_ENV
from tests.helpers import READ_TOKEN, SECRET, sign, wait_until
from tests.live import Live, serve
from tests.provider_helpers import shopify_signature

CONSUMER = Path(__file__).resolve().parent.parent / "examples" / "consumer.py"
OTHER_TENANT_TOKEN = "reader-token-someone-else-0123456789"
ENV = {k: v for k, v in BASE_ENV.items() if not k.startswith("CODEX_")}
SHOPIFY_SECRET = "shopify-secret-for-the-consumer-test"
# A Shopify source beside the generic ones (any other name, such as orders).
SOURCES_TOML = """
[sources.shopify]
scheme = "shopify"
secrets = ["env:SHOPIFY_SECRET"]
"""


@pytest.fixture(scope="module")
def service(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Live, str]]:
    """A serve of this module's own, on a database of its own (the 410 test purges it)."""
    sources = tmp_path_factory.mktemp("consumer-sources") / "sources.toml"
    sources.write_text(SOURCES_TOML)
    name, url = pg.create_database(pg_admin_url)
    migrations.apply_all(url)
    try:
        # A short grace: a consumer stopped mid long-poll leaves its request waiting on the server.
        with serve(url, CODEX_API_TOKENS=f"{READ_TOKEN}=*;{OTHER_TENANT_TOKEN}=someone-else",
                   CODEX_SOURCES=str(sources), SHOPIFY_SECRET=SHOPIFY_SECRET, SHUTDOWN_GRACE_SECONDS="1") as live:
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


def ingest(live: Live, source: str, body: dict, headers: dict[str, str]) -> None:
    """Post one webhook: stored (201)."""
    raw = json.dumps(body).encode()
    if source == "shopify":
        headers = {**headers, "X-Shopify-Hmac-Sha256": shopify_signature(SHOPIFY_SECRET, raw)}
    else:
        headers = {**headers, "X-Signature": sign(raw, SECRET)}
    request = urllib.request.Request(f"{live.url}/pos/{source}/ingest", data=raw,
                                     headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 201


def post(live: Live, tenant: str, key: str, kind: str | None = "order.created") -> str:
    """A generic-source event: its topic is the body's "type" (none: kind None)."""
    body = {"order_id": key, "total": "12.50"} if kind is None else {"type": kind, "order_id": key, "total": "12.50"}
    ingest(live, "orders", body, {"X-Tenant-Id": tenant, "Idempotency-Key": key})
    return key


def post_shopify(live: Live, shop: str, webhook_id: str, topic: str, body: dict) -> str:
    """A Shopify event: its topic only in X-Shopify-Topic (a Shopify body has no "type")."""
    assert "type" not in body
    ingest(live, "shopify", body, {"X-Shopify-Topic": topic, "X-Shopify-Shop-Domain": shop,
                                   "X-Shopify-Webhook-Id": webhook_id})
    return webhook_id


def stored_without_headers(database_url: str, tenant: str, key: str) -> str:
    """An event as stored before headers were kept (its headers null): written into the table itself."""
    body = json.dumps({"type": "order.created", "order_id": key}).encode()
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, content_type)"
                     " VALUES (%s, 'orders', %s, sha256(%s), %s, 'application/json')", (tenant, key, body, body))
    return key


def consume(live: Live, tenant: str | None, cursor: Path | None, *args: str, token: str | None = READ_TOKEN,
            program: list[str] | None = None, cwd: Path | None = None) -> tuple[int, list[dict], str]:
    """Run the consumer until idle: (exit status, the events it printed, its stderr).
    Tenant None: the combined feed (no --tenant); cursor None: its default cursor file, in ``cwd``."""
    env = ENV if token is None else {**ENV, "CODEX_READ_TOKEN": token}
    result = subprocess.run(
        [*(program or [sys.executable, str(CONSUMER)]), "--url", live.url,
         *(["--tenant", tenant] if tenant is not None else []),
         *(["--cursor-file", str(cursor)] if cursor is not None else []), "--limit", "3", "--until-idle", *args],
        env=env, capture_output=True, text=True, timeout=30, cwd=cwd,
    )
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines()], result.stderr


def keys(printed: list[dict]) -> list[str]:
    return [e["idempotency_key"] for e in printed]


def routed(printed: list[dict]) -> list[tuple]:
    """What each printed line says was done: (tenant, source, topic, key, handler)."""
    return [(e["tenant_id"], e["source"], e["topic"], e["idempotency_key"], e["handler"]) for e in printed]


def test_each_event_once_in_order_then_only_the_new_ones(live: Live, tenant: str, tmp_path: Path) -> None:
    cursor = tmp_path / "cursor"
    for i in range(7):
        post(live, tenant, f"k{i}")
    status, printed, stderr = consume(live, tenant, cursor)
    assert status == 0, stderr
    assert keys(printed) == [f"k{i}" for i in range(7)]  # 3 pages of --limit 3
    assert set(routed(printed)) == {(tenant, "orders", "order.created", k, "order_placed") for k in keys(printed)}

    for i in range(7, 11):
        post(live, tenant, f"k{i}")
    status, printed, stderr = consume(live, tenant, cursor)
    assert (status, keys(printed)) == (0, [f"k{i}" for i in range(7, 11)]), stderr
    status, printed, stderr = consume(live, tenant, cursor)
    assert (status, printed) == (0, []), stderr
    assert [p.name for p in tmp_path.iterdir()] == ["cursor"]  # no temporary file left behind


def test_the_combined_feed_routes_each_event_of_every_tenant_once_by_its_topic(service: tuple[Live, str],
                                                                               tmp_path: Path) -> None:
    live, database_url = service
    cursor = tmp_path / "cursor"
    # The default read, from the feed's start: every event earlier tests stored, whatever its tenant, once.
    status, printed, stderr = consume(live, None, cursor)
    assert status == 0, stderr
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT tenant_id, source, idempotency_key FROM events ORDER BY id").fetchall()
    assert sorted((e["tenant_id"], e["source"], e["idempotency_key"]) for e in printed) == sorted(map(tuple, rows))
    assert len(printed) == len(rows)

    run = uuid.uuid4().hex[:8]
    cafe, bakery = f"cafe-{run}", f"bakery-{run}"
    shop, deli = f"cafe-{run}.myshopify.com", f"deli-{run}.myshopify.com"
    # Tenants of the generic source (topic: the body's "type") and two Shopify shops (topic:
    # X-Shopify-Topic only), interleaved; (tenant, source, topic, key, handler) in the order posted.
    expected = [
        (cafe, "orders", "order.created", post(live, cafe, "a1"), "order_placed"),
        (shop, "shopify", "orders/create", post_shopify(live, shop, f"{run}-1", "orders/create",
                                                        {"id": 1001, "name": "#1001", "total_price": "12.50"}),
         "order_placed"),
        (bakery, "orders", "payment.updated", post(live, bakery, "b1", "payment.updated"), "payment"),
        (shop, "shopify", "orders/updated", post_shopify(live, shop, f"{run}-2", "orders/updated",
                                                         {"id": 1001, "name": "#1001", "total_price": "9.50"}),
         "order_changed"),
        (deli, "shopify", "refunds/create", post_shopify(live, deli, f"{run}-3", "refunds/create",
                                                         {"id": 77, "order_id": 2002, "note": "cold"}),
         "refund"),
        (cafe, "orders", "loyalty.points_added", post(live, cafe, "a2", "loyalty.points_added"), "other"),
        (bakery, "orders", "unknown", post(live, bakery, "b2", None), "other"),
        (deli, "orders", "order.created", stored_without_headers(database_url, deli, "d1"), "order_placed"),
    ]
    # Resumed from its cursor: only these, each to its topic's handler with its tenant, once (3 pages of 3).
    status, printed, stderr = consume(live, None, cursor)
    assert (status, routed(printed)) == (0, expected), stderr
    assert cursor.read_text().startswith("feed ")
    status, printed, stderr = consume(live, None, cursor)
    assert (status, printed) == (0, []), stderr

    # --tenant: that tenant's read, as before the feed, on a cursor of its own.
    status, printed, stderr = consume(live, shop, tmp_path / "shop.cursor")
    assert (status, routed(printed)) == (0, [e for e in expected if e[0] == shop]), stderr
    assert consume(live, shop, tmp_path / "shop.cursor")[:2] == (0, [])
    # A token for one tenant (with no events): its feed shows none of the others'.
    status, printed, stderr = consume(live, None, tmp_path / "other.cursor", token=OTHER_TENANT_TOKEN)
    assert (status, printed) == (0, []), stderr


def test_a_cursor_file_continues_only_its_own_kind_of_read(live: Live, tenant: str, tmp_path: Path) -> None:
    post(live, tenant, "k0")
    # The default files: one per kind of read.
    assert consume(live, tenant, None, cwd=tmp_path)[0] == 0
    assert consume(live, None, None, cwd=tmp_path)[0] == 0
    feed, own = tmp_path / "feed.cursor", tmp_path / f"{tenant}.cursor"
    assert sorted(tmp_path.iterdir()) == sorted([feed, own])
    assert own.read_text().startswith(f"tenant={tenant} ") and feed.read_text().startswith("feed ")
    saved = feed.read_text(), own.read_text()

    for read, path, says in [
        (tenant, feed, f"keeps the cursor of the combined feed (no --tenant), not of a read of tenant {tenant}"),
        (None, own, f"keeps the cursor of a read of tenant {tenant}, not of the combined feed"),
        ("shop-elsewhere", own, f"of a read of tenant {tenant}, not of a read of tenant shop-elsewhere"),
    ]:
        status, printed, stderr = consume(live, read, path)
        assert (status, printed) == (1, []) and stderr.startswith(f"consumer: {path} ") and says in stderr, stderr
    assert (feed.read_text(), own.read_text()) == saved  # refused before any read: nothing moved

    # A cursor alone, as this example kept it before it read the feed, is one tenant's: it goes on.
    legacy = tmp_path / "legacy.cursor"
    legacy.write_text(own.read_text().split()[1] + "\n")
    status, printed, stderr = consume(live, None, legacy)
    assert (status, printed) == (1, []) and "keeps the cursor of a one-tenant read, not of the combined" in stderr
    post(live, tenant, "k1")
    status, printed, stderr = consume(live, tenant, legacy)
    assert (status, keys(printed)) == (0, ["k1"]), stderr
    assert legacy.read_text().startswith(f"tenant={tenant} ")
    # A feed's cursor alone passes that check; the service refuses it to a tenant's read.
    legacy.write_text(feed.read_text().split()[1] + "\n")
    status, printed, stderr = consume(live, tenant, legacy)
    assert (status, printed) == (1, []), stderr
    assert stderr.startswith("consumer: 400 invalid_cursor: ") and f"(the cursor in {legacy})" in stderr, stderr


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
def following(live_url: str, cursor: Path) -> Iterator[subprocess.Popen[str]]:
    """The consumer as it runs for real: the combined feed, no --until-idle, waiting at the head;
    killed if a test fails."""
    with subprocess.Popen(
        [sys.executable, str(CONSUMER), "--url", live_url, "--cursor-file", str(cursor)],
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
    assert consume(live, None, cursor)[0] == 0  # the feed as far as earlier tests wrote it: then at its head
    # A consumer an earlier test stopped may have left its read waiting on the server (up to its wait=25).
    wait_until(lambda: readers_waiting(live) == 0, "earlier readers to leave the head", timeout=60)
    with following(live.url, cursor) as proc:
        wait_until(lambda: readers_waiting(live) == 1, "the consumer to wait at the head")
        post(live, tenant, "k0")
        # Woken by the write, not at its 25 s timeout: a bound far from both.
        assert routed([json.loads(read_line(proc, 15))]) == [(tenant, "orders", "order.created", "k0", "order_placed")]
        # Back in its wait (the read it was woken from has left the head; this is its next).
        wait_until(lambda: readers_waiting(live) == 1, "the consumer to wait at the head again")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0  # the long-poll is cut short, not waited out (25 s)
    assert cursor.read_text().startswith("feed ")
    status, printed, stderr = consume(live, None, cursor)
    assert (status, printed) == (0, []), stderr


def test_retries_while_the_service_is_unreachable(tmp_path: Path) -> None:
    with following(f"http://127.0.0.1:{free_port()}", tmp_path / "cursor") as proc:
        assert proc.stderr is not None
        # Tries at 0, 1 and 3 s: after its second failure it says it waits 2 s, and keeps going.
        said = read_until(proc.stderr, "retrying in 2 s", timeout=30)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0  # stopped during its backoff
        stderr = said + proc.stderr.read()
    assert "retrying in 1 s" in stderr and "retrying in 2 s" in stderr, stderr
