"""Per-(tenant, source) rate limit: token buckets with an injected clock, unit and over HTTP."""

from __future__ import annotations

from dataclasses import replace

import pytest

from codex_ingest.errors import RateLimited
from codex_ingest.intake.ratelimit import RateLimiter
from codex_ingest.web import appkeys as keys
from codex_ingest.web.app import create_app
from tests.helpers import headers


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refusal_with_the_wait_until_the_next_token() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.wait_time("t", "s") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.wait_time("t", "s") == pytest.approx(0.5)
    clock.now += 0.25
    assert limiter.wait_time("t", "s") == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.wait_time("t", "s") == 0.0
    assert limiter.wait_time("t", "s") > 0


def test_refill_never_exceeds_the_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(10.0, 2, clock=clock)
    limiter.wait_time("t", "s")
    clock.now += 3600
    assert [limiter.wait_time("t", "s") for _ in range(3)][-1] > 0


def test_retry_after_is_the_ceiling_of_the_wait_in_whole_seconds() -> None:
    clock = Clock()
    limiter = RateLimiter(0.25, 1, clock=clock)  # one token every 4 s
    limiter.check("t", "s")
    with pytest.raises(RateLimited) as refused:
        limiter.check("t", "s")
    assert refused.value.headers == {"Retry-After": "4"}
    clock.now += 3.5
    with pytest.raises(RateLimited) as refused:
        limiter.check("t", "s")
    assert refused.value.headers == {"Retry-After": "1"}  # 0.5 s rounds up, never to 0


def test_buckets_are_per_tenant_and_per_source() -> None:
    limiter = RateLimiter(1.0, 1, clock=Clock())
    assert limiter.wait_time("a", "square") == 0.0
    assert limiter.wait_time("a", "square") > 0
    assert limiter.wait_time("b", "square") == 0.0
    assert limiter.wait_time("a", "toast") == 0.0


def test_idle_buckets_are_evicted_and_memory_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 5, clock=clock, max_keys=1000)
    for i in range(500):
        limiter.wait_time(f"tenant-{i}", "s")
    assert len(limiter) == 500
    clock.now += 5.0  # every bucket has refilled: keeping it would change nothing
    limiter.wait_time("fresh", "s")
    assert len(limiter) == 1
    for i in range(5000):  # all busy at once: the cap holds
        limiter.wait_time(f"burst-{i}", "s")
    assert len(limiter) <= 1000


def test_a_busy_bucket_is_not_evicted_while_refilling() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 2, clock=clock)
    limiter.wait_time("hot", "s")
    limiter.wait_time("hot", "s")
    clock.now += 1.0
    limiter.wait_time("other", "s")  # triggers eviction; "hot" has 1 of 2 tokens
    assert limiter.wait_time("hot", "s") == 0.0
    assert limiter.wait_time("hot", "s") > 0


def test_rate_limit_is_off_by_default(settings) -> None:
    assert settings.rate_limit_per_sec == 0
    assert keys.RATE_LIMITER not in create_app(settings)


URL = "/pos/square/ingest"


def body(n: int) -> bytes:
    return b'{"n":%d}' % n


@pytest.fixture
async def limited(aiohttp_client, settings, db):
    """A client of an app limited to 1/s with bursts of 3, on a clock the test moves."""
    clock = Clock()
    app = create_app(replace(settings, rate_limit_per_sec=1.0, rate_limit_burst=3))
    app[keys.RATE_LIMITER] = RateLimiter(1.0, 3, clock=clock)
    return await aiohttp_client(app), clock


async def count(db) -> int:
    return await db.fetchval("SELECT count(*) FROM events")


async def test_http_burst_then_429_with_retry_after_and_nothing_stored(limited, db) -> None:
    client, clock = limited
    answers = [await client.post(URL, data=body(i), headers=headers(body(i))) for i in range(3)]
    assert [r.status for r in answers] == [201, 201, 201]
    refused = await client.post(URL, data=body(3), headers=headers(body(3)))
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    doc = await refused.json()
    assert doc["error"] == "rate_limited" and doc["detail"]
    assert await count(db) == 3

    clock.now += 1.0
    again = await client.post(URL, data=body(3), headers=headers(body(3)))
    assert again.status == 201
    assert await count(db) == 4


async def test_http_separate_buckets_per_tenant_and_source(limited, db) -> None:
    client, _ = limited
    for i in range(3):
        await client.post(URL, data=body(i), headers=headers(body(i)))
    assert (await client.post(URL, data=body(9), headers=headers(body(9)))).status == 429
    other_tenant = await client.post(URL, data=body(9), headers=headers(body(9), tenant="tenant-2"))
    other_source = await client.post("/pos/toast/ingest", data=body(9), headers=headers(body(9)))
    assert (other_tenant.status, other_source.status) == (201, 201)
    assert await count(db) == 5


async def test_http_rate_limited_counted_in_metrics_without_a_tenant_label(limited, db) -> None:
    client, _ = limited
    for i in range(5):
        await client.post(URL, data=body(i), headers=headers(body(i)))
    text = await (await client.get("/metrics")).text()
    line = next(x for x in text.splitlines() if x.startswith("codex_ingest_events_total{") and "rate_limited" in x)
    assert 'source="square"' in line and "tenant" not in line
    assert float(line.rsplit(" ", 1)[1]) == 2.0


async def test_http_refused_before_the_body_is_read(limited, db) -> None:
    # An over-limit request is refused on its headers alone: a declared
    # body far over MAX_BODY_BYTES gets 429, not 413.
    client, _ = limited
    for i in range(3):
        await client.post(URL, data=body(i), headers=headers(body(i)))
    big = b'{"p":"' + b"x" * (200 * 1024) + b'"}'
    resp = await client.post(URL, data=big, headers=headers(big))
    assert resp.status == 429
    assert await count(db) == 3


async def test_http_invalid_tenant_is_400_not_429(limited, db) -> None:
    client, _ = limited
    for i in range(3):
        await client.post(URL, data=body(i), headers=headers(body(i)))
    resp = await client.post(URL, data=body(5), headers=headers(body(5), tenant="bad tenant"))
    assert resp.status == 400


CLOVER_TOML = """
[sources.clover]
scheme = "clover"
secrets = ["clover-auth"]
"""
CLOVER = b'{"appId":"A","merchants":{"MID1":[{"objectId":"O:%d","type":"UPDATE","ts":1}]}}'


async def test_provider_source_limited_by_the_tenant_it_names(aiohttp_client, settings, db) -> None:
    # Clover names the merchant in the body: the bucket is the merchant's,
    # checked after verification and before anything is stored.
    from codex_ingest.intake.sources import parse_sources

    clock = Clock()
    app = create_app(replace(settings, source_table=parse_sources(CLOVER_TOML, {})))
    app[keys.RATE_LIMITER] = RateLimiter(1.0, 2, clock=clock)
    client = await aiohttp_client(app)
    h = {"Content-Type": "application/json", "X-Clover-Auth": "clover-auth"}
    answers = [await client.post("/pos/clover/ingest", data=CLOVER % i, headers=h) for i in range(3)]
    assert [r.status for r in answers] == [201, 201, 429]
    assert answers[2].headers["Retry-After"] == "1"
    # An overriding tenant has its own bucket, checked before the body is read.
    other = await client.post("/pos/clover/ingest?tenant=t-9", data=CLOVER % 7, headers=h)
    assert other.status == 201
    assert await count(db) == 3
    assert await db.fetchval("SELECT count(*) FROM events WHERE tenant_id = 'MID1'") == 2
