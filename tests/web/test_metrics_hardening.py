"""/metrics under attack: source names that never existed take no label
(issue 18 A), and the scrape can be closed with METRICS_TOKEN and costs one
rendering per METRICS_CACHE_SECONDS however many scrapes come (issue 18 B).

The label rule is checked on ServiceMetrics itself, on the app, and on a real
2-worker ``serve`` given the attack that inflated /metrics to 1.63 MB; the
token on the app and on a real ``serve`` (its log included); the shared
rendering on the app, by the number of renderings the /metrics route made.
Prometheus scraping with the token from a file is tests/ops/test_prometheus.py's.
"""

from __future__ import annotations

import asyncio
import random
import string
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from codex_ingest.settings import SERVE_OPTIONS, ConfigError, load_settings
from codex_ingest.telemetry.metrics import MAX_SOURCE_LABELS, OTHER_SOURCE, OUTCOMES, ServiceMetrics
from codex_ingest.telemetry.scrape import Exposition
from tests import live
from tests.helpers import SECRET, headers, sign, until
from tests.ops.stack import serve_workers

TOKEN = "metrics-token-0123456789-abcdef"
BODY = b'{"type":"payment.updated"}'
# The finding's attack: 260 unsigned requests, each to a name of 8 KB of letters.
ATTACK_REQUESTS = 260
LONG_NAME_LETTERS = 8000


def events_total(text: str) -> dict[tuple[str, str], float]:
    """codex_ingest_events_total: (source, outcome) -> value."""
    return {
        (s.labels["source"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "codex_ingest_events_total"
    }


def source_labels(text: str) -> set[str]:
    return {source for source, _ in events_total(text)}


def long_names(count: int, seed: int = 18) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(string.ascii_letters, k=LONG_NAME_LETTERS)) for _ in range(count)]


def exposition_of(client: TestClient) -> Exposition:
    """The shared rendering behind the app's GET /metrics route."""
    (route,) = [r for r in client.app.router.routes() if r.method == "GET" and r.resource is not None
                and r.resource.canonical == "/metrics"]
    return route.handler.__wrapped__.__self__.exposition  # the endpoint behind the handlers' wrapper


async def scrape(client: TestClient, **request_headers: str) -> str:
    resp = await client.get("/metrics", headers=request_headers)
    assert resp.status == 200, await resp.text()
    return await resp.text()


# --- A: only sources that exist take a label -------------------------------------------


def test_an_undeclared_name_refused_before_it_proved_anything_is_counted_as_other() -> None:
    metrics = ServiceMetrics(CollectorRegistry(), sources=["declared"])
    for outcome in ("rejected_signature", "rejected_input", "rate_limited", "unavailable"):
        metrics.record("never-verified", outcome, 0.001)
    metrics.record("declared", "rejected_signature", 0.001)
    found = events_total(metrics.exposition().decode())
    assert source_labels(metrics.exposition().decode()) == {"declared", OTHER_SOURCE}
    assert found[("declared", "rejected_signature")] == 1
    assert {o: found[(OTHER_SOURCE, o)] for o in ("rejected_signature", "rejected_input", "rate_limited", "unavailable")} \
        == dict.fromkeys(("rejected_signature", "rejected_input", "rate_limited", "unavailable"), 1.0)


@pytest.mark.parametrize("outcome,verified", [
    ("accepted", False), ("duplicate", False), ("conflict", False), ("unavailable", True), ("rate_limited", True),
])
def test_an_outcome_that_proves_a_verified_request_gives_the_source_its_label(outcome: str, verified: bool) -> None:
    metrics = ServiceMetrics(CollectorRegistry())
    metrics.record("real", "rejected_signature", 0.001)  # before it proved anything: "_other"
    metrics.record("real", outcome, 0.001, verified=verified)
    metrics.record("real", "rejected_signature", 0.001)  # once it exists, every outcome is its own
    found = events_total(metrics.exposition().decode())
    assert found[("real", outcome)] == 1
    assert found[("real", "rejected_signature")] == 1 and found[(OTHER_SOURCE, "rejected_signature")] == 1
    assert {o for s, o in found if s == "real"} == set(OUTCOMES)


def test_rejected_input_after_verification_takes_no_label_and_a_batch_proves_its_source() -> None:
    metrics = ServiceMetrics(CollectorRegistry())
    metrics.record("signed-garbage", "rejected_input", 0.001, verified=True)
    metrics.record_events("batched", ["rejected_input", "accepted"], "accepted", 0.001)
    metrics.record_events("all-invalid", ["rejected_input"], "duplicate", 0.001)  # a batch answers 200 even so
    metrics.record_events("clover-like", ["accepted", "unavailable"], "unavailable", 0.001)
    found = events_total(metrics.exposition().decode())
    assert source_labels(metrics.exposition().decode()) == {"batched", "clover-like", OTHER_SOURCE}
    assert found[("batched", "accepted")] == 1 and found[("batched", "rejected_input")] == 1
    assert found[("clover-like", "unavailable")] == 1
    assert found[(OTHER_SOURCE, "rejected_input")] == 2


def test_invented_names_cannot_use_up_the_label_slots() -> None:
    metrics = ServiceMetrics(CollectorRegistry())
    for i in range(MAX_SOURCE_LABELS * 3):
        metrics.record(f"invented{i}", "rejected_signature", 0.001)
        metrics.record(f"invented{i}", "rejected_input", 0.001)
    metrics.record("square", "accepted", 0.001)
    found = events_total(metrics.exposition().decode())
    assert source_labels(metrics.exposition().decode()) == {"square", OTHER_SOURCE}
    assert found[("square", "accepted")] == 1
    assert found[(OTHER_SOURCE, "rejected_signature")] == MAX_SOURCE_LABELS * 3


async def test_the_app_labels_only_sources_that_verified(make_client, db) -> None:
    client = await make_client(metrics_cache_seconds=0)
    for name in long_names(3):
        resp = await client.post(f"/pos/{name}/ingest", data=BODY, headers=headers(BODY))
        assert resp.status == 400 and (await resp.json())["error"] == "invalid_source"
    unsigned = {**headers(BODY), "X-Signature": "sha256=" + "0" * 64}
    for _ in range(2):
        assert (await client.post("/pos/forged/ingest", data=BODY, headers=unsigned)).status == 401
    assert (await client.post("/pos/forged/ingest", data=BODY, headers=headers(BODY, tenant=None))).status == 400
    assert (await client.post("/pos/square/ingest", data=BODY, headers=headers(BODY))).status == 201
    assert (await client.post("/pos/square/ingest", data=BODY, headers=unsigned)).status == 401
    found = events_total(await scrape(client))
    assert source_labels(await scrape(client)) == {"square", OTHER_SOURCE}
    assert (found[("square", "accepted")], found[("square", "rejected_signature")]) == (1, 1)
    assert (found[(OTHER_SOURCE, "rejected_input")], found[(OTHER_SOURCE, "rejected_signature")]) == (4, 2)


def _get(url: str, **request_headers: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=request_headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


async def test_the_long_name_attack_on_a_real_two_worker_serve_leaves_metrics_and_square_alone(
    database_url: str, tmp_path: Path
) -> None:
    with serve_workers(database_url, tmp_path, 2, METRICS_CACHE_SECONDS="0", LOG_LEVEL="WARNING") as service:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as http:

            async def post(name: str, body: bytes, signature: str) -> int:
                async with http.post(f"{service.url}/pos/{name}/ingest", data=body, headers={
                    "Content-Type": "application/json", "X-Tenant-Id": "attack", "X-Signature": signature,
                }) as resp:
                    return resp.status

            before = len(_get(f"{service.url}/metrics")[1])
            statuses = await asyncio.gather(*(post(name, BODY, "sha256=" + "0" * 64) for name in long_names(ATTACK_REQUESTS)))
            assert set(statuses) == {400}
            # Names that pass validation but are not signed: refused before they proved anything either.
            statuses = await asyncio.gather(*(post(f"made-up-{i}", BODY, "sha256=" + "0" * 64) for i in range(ATTACK_REQUESTS)))
            assert set(statuses) == {401}
            assert await post("square", BODY, sign(BODY, SECRET)) == 201

        def every_count_flushed() -> bytes | None:
            # Each worker applies its counts to the shared series within a second (telemetry/deferred.py).
            status, text = _get(f"{service.url}/metrics")
            assert status == 200
            found = events_total(text.decode())
            flushed = (found.get((OTHER_SOURCE, "rejected_input")) == ATTACK_REQUESTS
                       and found.get((OTHER_SOURCE, "rejected_signature")) == ATTACK_REQUESTS)
            return text if flushed else None

        text = await until(every_count_flushed, "both workers' counts in the series")
    found = events_total(text.decode())
    assert source_labels(text.decode()) == {"square", OTHER_SOURCE}
    assert found[("square", "accepted")] == 1
    assert found[(OTHER_SOURCE, "rejected_input")] == ATTACK_REQUESTS
    assert found[(OTHER_SOURCE, "rejected_signature")] == ATTACK_REQUESTS
    # Before the fix: 70 KB grew to 1.63 MB. Now only the new answers' series are added
    # (square's 7, the 400 and 401 of the ingest route's HTTP series).
    assert len(text) < before + 16 * 1024, (before, len(text))


# --- B: the token --------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", "Bearer ", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN.upper()}",
    f"Token {TOKEN}", TOKEN,
], ids=lambda a: "none" if a is None else repr(a.replace(TOKEN, "<token>")))
async def test_with_metrics_token_anything_but_the_bearer_token_is_401_and_renders_nothing(
    make_client, db, authorization: str | None
) -> None:
    client = await make_client(metrics_token=TOKEN, metrics_cache_seconds=0)
    request_headers = {} if authorization is None else {"Authorization": authorization}
    for method in (client.get, client.head):
        resp = await method("/metrics", headers=request_headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = await client.get("/metrics", headers=request_headers)
    doc = await resp.json()
    assert set(doc) == {"error", "detail"} and doc["error"] == "unauthorized" and doc["detail"]
    assert TOKEN not in await resp.text()
    assert exposition_of(client).renders == 0


async def test_the_token_is_taken_from_the_header_only_never_the_url(make_client, db) -> None:
    client = await make_client(metrics_token=TOKEN, metrics_cache_seconds=0)
    for query in (f"?token={TOKEN}", f"?access_token={TOKEN}", f"?authorization=Bearer%20{TOKEN}"):
        assert (await client.get(f"/metrics{query}")).status == 401
    text = await scrape(client, Authorization=f"bearer {TOKEN}")  # the scheme is case-insensitive, as in RFC 7235
    assert "codex_ingest_build_info" in text
    resp = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.headers["Content-Type"] == "text/plain; version=1.0.0; charset=utf-8"  # as the exporter's handler sent it


async def test_without_metrics_token_metrics_stays_open(make_client, db) -> None:
    client = await make_client(metrics_cache_seconds=0)
    assert "codex_ingest_build_info" in await scrape(client)


async def test_an_unauthenticated_flood_costs_no_rendering(make_client, db) -> None:
    client = await make_client(metrics_token=TOKEN, metrics_cache_seconds=0)
    answers = await asyncio.gather(*(client.get("/metrics") for _ in range(200)))
    assert {a.status for a in answers} == {401}
    assert exposition_of(client).renders == 0
    await scrape(client, Authorization=f"Bearer {TOKEN}")
    assert exposition_of(client).renders == 1


@pytest.mark.parametrize("value", ["short", "a token with spaces 0123456789", "tab\tin-the-token-0123456789"])
def test_a_bad_metrics_token_is_refused_without_echoing_it(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(SERVE_OPTIONS, {}, {"WEBHOOK_SECRET": SECRET, "METRICS_TOKEN": value})
    assert "METRICS_TOKEN" in str(caught.value) and value not in str(caught.value)


def test_a_real_serve_answers_only_the_token_and_never_logs_it(database_url: str) -> None:
    with live.serve(database_url, METRICS_TOKEN=TOKEN, LOG_LEVEL="DEBUG", ACCESS_LOG="on") as service:
        status, body = _get(f"{service.url}/metrics")
        assert status == 401 and b'"error":"unauthorized"' in body
        assert _get(f"{service.url}/metrics", Authorization=f"Bearer {TOKEN}x")[0] == 401
        assert _get(f"{service.url}/metrics?token={TOKEN}")[0] == 401
        status, body = _get(f"{service.url}/metrics", Authorization=f"Bearer {TOKEN}")
        assert status == 200 and b"codex_ingest_build_info" in body
        log = service.log()
    assert '"serving"' in log and "metrics_cache_seconds" in log  # the settings are logged ...
    assert TOKEN not in log and "metrics_token" not in log        # ... except the token


# --- B: one rendering per interval ---------------------------------------------------------


async def test_a_flood_of_scrapes_is_one_rendering_per_interval(make_client, db) -> None:
    client = await make_client(metrics_cache_seconds=60)
    bodies = await asyncio.gather(*(scrape(client) for _ in range(50)))
    bodies += [await scrape(client) for _ in range(20)]
    assert len(set(bodies)) == 1
    assert exposition_of(client).renders == 1


async def test_a_scrape_within_the_interval_is_the_earlier_rendering_and_after_it_a_new_one(make_client, db) -> None:
    cached = await make_client(metrics_cache_seconds=60)
    fresh = await make_client(metrics_cache_seconds=0)
    for client in (cached, fresh):
        await scrape(client)
        assert (await client.post("/pos/square/ingest", data=BODY, headers=headers(BODY))).status in (200, 201)
    # Within 60 s: the same bytes, rendered before the ingest.
    assert ("square", "accepted") not in events_total(await scrape(cached))
    assert exposition_of(cached).renders == 1
    # With 0: every scrape is rendered (one ingest each: the first stored it, the second is a duplicate).
    assert events_total(await scrape(fresh))[("square", "duplicate")] == 1
    assert exposition_of(fresh).renders == 2


class _Render:
    """A real rendering of a registry, which can be held while it runs."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.counter = Counter("things", "Things.", registry=self.registry)
        self.release = threading.Event()
        self.release.set()
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        assert self.release.wait(30)
        return generate_latest(self.registry)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_scrapes_that_arrive_while_one_renders_wait_for_that_rendering() -> None:
    render = _Render()
    exposition = Exposition(render, max_age=0)
    render.release.clear()
    waiting = [asyncio.ensure_future(exposition.body()) for _ in range(20)]
    await _started(render)
    render.release.set()
    bodies = await asyncio.gather(*waiting)
    assert render.calls == 1 and len(set(bodies)) == 1


async def test_a_scrape_that_gives_up_does_not_cancel_the_rendering_of_the_others() -> None:
    render = _Render()
    exposition = Exposition(render, max_age=0)
    render.release.clear()
    first, second = asyncio.ensure_future(exposition.body()), asyncio.ensure_future(exposition.body())
    await _started(render)
    first.cancel()
    render.release.set()
    assert b"things_total" in await second
    assert render.calls == 1


async def test_a_rendering_is_reused_for_max_age_seconds_after_it_ends() -> None:
    render, clock = _Render(), _Clock()
    exposition = Exposition(render, max_age=1.0, clock=clock)
    first = await exposition.body()
    render.counter.inc()
    clock.now += 0.99
    assert await exposition.body() == first and render.calls == 1
    clock.now += 0.02
    assert b"things_total 1.0" in await exposition.body() and render.calls == 2



async def _started(render: _Render, timeout: float = 30) -> None:
    """Until the rendering thread has entered ``render`` (polled, not a guessed wait)."""
    deadline = time.monotonic() + timeout
    while render.calls == 0:
        assert time.monotonic() < deadline, "the rendering never started"
        await asyncio.sleep(0.001)
