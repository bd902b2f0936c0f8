"""Whose budget a request spends (issue 18, D): only a request whose signature
verified takes a token from its tenant's bucket. Unsigned or wrongly signed
requests naming a tenant are 401, never 429, and leave the tenant's budget
(and the limiter's memory) as they found it. (That an empty bucket still
refuses before the body is read: test_ratelimit.py.)"""

from __future__ import annotations

from dataclasses import replace

import orjson

from codex_ingest.intake.ratelimit import RateLimiter
from codex_ingest.intake.sources import parse_sources
from codex_ingest.web import appkeys as keys
from codex_ingest.web.app import create_app
from tests.helpers import headers
from tests.provider_helpers import b64_hmac

FORGED = "sha256=" + "0" * 64


class Clock:
    """Time stands still unless the test moves it: no token comes back by itself."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def limited_client(aiohttp_client, settings, *, rate: float = 1.0, burst: int = 5, **changes):
    app = create_app(replace(settings, rate_limit_per_sec=rate, rate_limit_burst=burst, **changes))
    limiter = RateLimiter(rate, burst, clock=Clock())
    app[keys.RATE_LIMITER] = limiter
    return await aiohttp_client(app), limiter


def body(n: int) -> bytes:
    return b'{"n":%d}' % n


async def test_forged_requests_for_a_tenant_do_not_spend_its_budget(aiohttp_client, settings, db) -> None:
    client, limiter = await limited_client(aiohttp_client, settings)
    forged = [await client.post("/pos/orders/ingest", data=body(i), headers={**headers(body(i), tenant="shop-1"),
                                                                            "X-Signature": FORGED})
              for i in range(20)]
    unsigned = [await client.post("/pos/orders/ingest", data=body(i),
                                  headers={"X-Tenant-Id": "shop-1", "Content-Type": "application/json"})
                for i in range(20)]
    assert {r.status for r in forged + unsigned} == {401}
    assert len(limiter) == 0  # not even a bucket was made for them

    signed = [await client.post("/pos/orders/ingest", data=body(i), headers=headers(body(i), tenant="shop-1"))
              for i in range(6)]
    assert [r.status for r in signed] == [201] * 5 + [429]  # the whole burst, then the limit
    assert await db.fetchval("SELECT count(*) FROM events WHERE tenant_id = 'shop-1'") == 5


async def test_forged_batches_do_not_spend_it_either(aiohttp_client, settings, db) -> None:
    client, limiter = await limited_client(aiohttp_client, settings, burst=2)
    batch = orjson.dumps([{"event_id": "a"}, {"event_id": "b"}])
    url = "/pos/orders/ingest/batch"
    for _ in range(10):
        forged = await client.post(url, data=batch, headers={**headers(batch, tenant="shop-1"), "X-Signature": FORGED})
        assert forged.status == 401
    answers = [await client.post(url, data=batch, headers=headers(batch, tenant="shop-1")) for _ in range(3)]
    assert [r.status for r in answers] == [200, 200, 429]


async def test_a_provider_request_naming_its_tenant_spends_only_once_verified(aiohttp_client, settings, db) -> None:
    table = parse_sources('[sources.shop]\nscheme = "shopify"\nsecrets = ["shop-secret"]\n', {})
    client, _ = await limited_client(aiohttp_client, settings, burst=2, source_table=table)
    url = "/pos/shop/ingest?tenant=shop-1"

    def shopify(n: int, signature: str | None = None) -> dict[str, str]:
        return {"Content-Type": "application/json", "X-Shopify-Webhook-Id": f"w-{n}",
                "X-Shopify-Hmac-Sha256": signature or b64_hmac("shop-secret", body(n))}

    for i in range(10):
        forged = await client.post(url, data=body(i), headers=shopify(i, signature=b64_hmac("guess", body(i))))
        assert forged.status == 401
    answers = [await client.post(url, data=body(i), headers=shopify(i)) for i in range(3)]
    assert [r.status for r in answers] == [201, 201, 429]


def test_a_bucket_is_looked_at_without_spending_or_storing() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 2, clock=clock)
    limiter.check_available("t", "s")
    assert len(limiter) == 0
    limiter.check("t", "s")
    limiter.check("t", "s")
    assert limiter.available_in("t", "s") == 1.0
    clock.now += 1.0
    assert limiter.available_in("t", "s") == 0.0
    assert limiter.available_in("t", "s") == 0.0  # looking twice took nothing
    assert limiter.wait_time("t", "s") == 0.0
