"""Events keep their request headers: through the real app and real
PostgreSQL, what GET /events (and ``codex-ingest export``) shows under
``"headers"`` for a generic event, a Shopify event and a batch's items; a
name the sources file lists; never Authorization, Cookie or a value carrying
one of our secrets or tokens; the size bound (accepted, the rest dropped and
counted in codex_ingest_headers_dropped_total); and nothing kept, nothing
counted, for a forged request."""

from __future__ import annotations

import asyncio
import base64
import json

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from codex_ingest.intake.sources import SourcesConfig, SourceSpec
from codex_ingest.settings import ReadToken
from tests.cli import run_cli
from tests.helpers import SECRET, sign, stored
from tests.provider_helpers import payload, shopify_signature
from tests.rawhttp import build, exchange

READ_TOKEN = "stored-headers-read-token-0123456789"
METRICS_TOKEN = "stored-headers-metrics-token-0123456789"
READING = {"api_tokens": (ReadToken(READ_TOKEN, None),), "metrics_cache_seconds": 0}
USER_AGENT = "Codex-Tests/1.0 (+Stored Headers)"

SHOP_SECRET = "shopify-app-secret-7d3c1b"
SHOP_TOML = f"""
[sources.shopify]
scheme = "shopify"
secrets = ["{SHOP_SECRET}"]
headers = ["X-Request-Id", "X-Debug"]
"""
SHOP_BODY = payload("shopify-orders-paid")
SHOP_DOMAIN = "cafe-lumen.myshopify.com"


def shopify_headers(body: bytes = SHOP_BODY, webhook_id: str = "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
                    **extra: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "Shopify-Captain-Hook",
        "X-Shopify-Hmac-Sha256": shopify_signature(SHOP_SECRET, body),
        "X-Shopify-Topic": "orders/paid",
        "X-Shopify-Shop-Domain": SHOP_DOMAIN,
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-API-Version": "2026-10",
        **extra,
    }


async def events(client, tenant: str) -> list[dict]:
    """Every event of ``tenant`` as GET /events shows it."""
    resp = await client.get(f"/events?tenant={tenant}", headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert resp.status == 200, await resp.text()
    return (await resp.json())["events"]


async def dropped(client, metrics_token: str | None = None) -> dict[str, float]:
    """codex_ingest_headers_dropped_total by reason, read from GET /metrics."""
    auth = {} if metrics_token is None else {"Authorization": f"Bearer {metrics_token}"}
    resp = await client.get("/metrics", headers=auth)
    assert resp.status == 200
    out = {s.labels["reason"]: s.value
           for family in text_string_to_metric_families(await resp.text()) for s in family.samples
           if s.name == "codex_ingest_headers_dropped_total"}
    assert set(out) == {"size", "secret", "encoding"}, out  # exported from the start, at 0
    return out


NOTHING_DROPPED = {"size": 0, "secret": 0, "encoding": 0}


# --- what is shown -----------------------------------------------------------------------------


@pytest.mark.both_write_paths
async def test_a_generic_event_shows_the_headers_its_scheme_read(make_client, db) -> None:
    client = await make_client(**READING)
    body = b'{"type":"order.created","order_id":"ord_1001"}'
    sent = {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT, "X-Tenant-Id": "shop-1",
            "Idempotency-Key": "evt_1", "X-Signature": sign(body), "X-Not-Kept": "x", "Accept-Language": "fr"}
    resp = await client.post("/pos/orders/ingest", data=body, headers=sent)
    assert resp.status == 201, await resp.text()
    [event] = await events(client, "shop-1")
    assert event["headers"] == {"content-type": "application/json; charset=utf-8", "user-agent": USER_AGENT,
                                "x-tenant-id": "shop-1", "idempotency-key": "evt_1", "x-signature": sign(body)}
    assert base64.b64decode(event["body_base64"]) == body
    assert await dropped(client) == NOTHING_DROPPED


async def test_a_shopify_event_shows_its_topic_shop_webhook_id_and_hmac(provider_client, db) -> None:
    client = await provider_client(SHOP_TOML, **READING)
    sent = shopify_headers()
    resp = await client.post("/pos/shopify/ingest", data=SHOP_BODY, headers=sent)
    assert resp.status == 201, await resp.text()
    [event] = await events(client, SHOP_DOMAIN)
    assert event["headers"] == {name.lower(): value for name, value in sent.items()}
    assert event["headers"]["x-shopify-topic"] == "orders/paid"
    assert event["headers"]["x-shopify-hmac-sha256"] == shopify_signature(SHOP_SECRET, SHOP_BODY)
    assert event["idempotency_key"] == sent["X-Shopify-Webhook-Id"]


async def test_a_duplicate_keeps_the_headers_of_the_first_delivery(provider_client, db) -> None:
    client = await provider_client(SHOP_TOML, **READING)
    first = shopify_headers(**{"X-Request-Id": "first-delivery"})
    assert (await client.post("/pos/shopify/ingest", data=SHOP_BODY, headers=first)).status == 201
    retry = shopify_headers(**{"X-Request-Id": "retry", "X-Shopify-Topic": "orders/updated"})
    assert (await client.post("/pos/shopify/ingest", data=SHOP_BODY, headers=retry)).status == 200
    [event] = await events(client, SHOP_DOMAIN)
    assert (event["headers"]["x-request-id"], event["headers"]["x-shopify-topic"]) == ("first-delivery", "orders/paid")


@pytest.mark.both_write_paths
@pytest.mark.parametrize(("content_type", "body"), [
    ("application/json", orjson.dumps([{"event_id": "b-1"}, {"event_id": "b-2"}, {"event_id": "b-3"}])),
    ("application/x-ndjson", b'{"event_id":"b-1"}\n{"event_id":"b-2"}\n{"event_id":"b-3"}\n'),
], ids=["array", "ndjson"])
async def test_each_item_of_a_batch_carries_the_batch_requests_headers(make_client, db, content_type, body) -> None:
    client = await make_client(**READING)
    sent = {"Content-Type": content_type, "User-Agent": USER_AGENT, "X-Tenant-Id": "pos-7",
            "X-Signature": sign(body), "Idempotency-Key": "batch-42"}
    resp = await client.post("/pos/terminal/ingest/batch", data=body, headers=sent)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["counts"]["accepted"] == 3
    shown = await events(client, "pos-7")
    assert [e["idempotency_key"] for e in shown] == ["b-1", "b-2", "b-3"]
    expected = {name.lower(): value for name, value in sent.items()}
    assert [e["headers"] for e in shown] == [expected] * 3


async def test_a_name_the_sources_file_lists_is_stored_and_an_unlisted_one_is_not(provider_client, db) -> None:
    client = await provider_client(SHOP_TOML, **READING)
    sent = shopify_headers(**{"X-Request-Id": "req-7f3a", "X-Unlisted": "nope"})
    assert (await client.post("/pos/shopify/ingest", data=SHOP_BODY, headers=sent)).status == 201
    [event] = await events(client, SHOP_DOMAIN)
    assert event["headers"]["x-request-id"] == "req-7f3a"
    assert "x-unlisted" not in event["headers"]


async def test_an_event_stored_before_headers_were_kept_shows_null(make_client, db) -> None:
    client = await make_client(**READING)
    await db.execute("INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body)"
                     " VALUES ('shop-1', 'old', 'k', decode(repeat('00', 32), 'hex'), '{}')")
    [event] = await events(client, "shop-1")
    assert "headers" in event and event["headers"] is None


# --- never stored --------------------------------------------------------------------------------


CREDENTIALS = {"Authorization": "Basic dXNlcjpwYXNz", "Cookie": "session=abc123", "Proxy-Authorization": "Basic eHl6"}


async def test_authorization_and_cookie_are_never_stored_even_when_sent(make_client, db) -> None:
    client = await make_client(**READING)
    body = b'{"n":1}'
    resp = await client.post("/pos/orders/ingest", data=body,
                             headers={"Content-Type": "application/json", "X-Tenant-Id": "shop-1",
                                      "X-Signature": sign(body), **CREDENTIALS})
    assert resp.status == 201, await resp.text()
    [event] = await events(client, "shop-1")
    assert event["headers"]["x-signature"] == sign(body)
    assert not {"authorization", "cookie", "proxy-authorization"} & set(event["headers"])
    row = (await stored(db))[0]
    for value in CREDENTIALS.values():
        assert value not in row["headers"]


async def test_authorization_and_cookie_are_never_stored_even_when_a_source_lists_them(make_client, db) -> None:
    # parse_sources refuses these names; a table built by other means must not get them stored either.
    secret = "listed-forbidden-source-secret"
    table = SourcesConfig(strict=False, sources={"shopify": SourceSpec(
        name="shopify", scheme="shopify", secrets=(secret,),
        headers=("Authorization", "Cookie", "Proxy-Authorization", "X-Request-Id"))})
    client = await make_client(source_table=table, **READING)
    body = SHOP_BODY
    sent = {"Content-Type": "application/json", "X-Shopify-Hmac-Sha256": shopify_signature(secret, body),
            "X-Shopify-Shop-Domain": SHOP_DOMAIN, "X-Shopify-Webhook-Id": "w-1", "X-Request-Id": "r-1", **CREDENTIALS}
    assert (await client.post("/pos/shopify/ingest", data=body, headers=sent)).status == 201
    [event] = await events(client, SHOP_DOMAIN)
    assert event["headers"]["x-request-id"] == "r-1"
    assert not {"authorization", "cookie", "proxy-authorization"} & set(event["headers"])


async def test_a_header_carrying_a_token_or_secret_of_ours_is_not_stored_and_is_counted(provider_client, db) -> None:
    client = await provider_client(SHOP_TOML, metrics_token=METRICS_TOKEN, **READING)
    sent = shopify_headers(**{
        "X-Request-Id": f"Bearer {READ_TOKEN}",    # the read API's token, as a part
        "X-Debug": f"key={SECRET}",                # WEBHOOK_SECRET (non-ASCII, sent as UTF-8), as a part
        "User-Agent": METRICS_TOKEN,               # METRICS_TOKEN, whole
        "X-Shopify-API-Version": SHOP_SECRET,      # the source's own secret, in one of the scheme's headers
    })
    resp = await client.post("/pos/shopify/ingest", data=SHOP_BODY, headers=sent)
    assert resp.status == 201, await resp.text()
    [event] = await events(client, SHOP_DOMAIN)
    assert set(event["headers"]) == {"content-type", "x-shopify-hmac-sha256", "x-shopify-topic",
                                     "x-shopify-shop-domain", "x-shopify-webhook-id"}
    row_text = (await stored(db))[0]["headers"]
    for secret in (READ_TOKEN, SECRET, METRICS_TOKEN, SHOP_SECRET):
        assert secret not in row_text
    assert await dropped(client, METRICS_TOKEN) == {"size": 0, "secret": 4, "encoding": 0}


async def test_a_header_that_is_not_utf8_is_not_stored_and_is_counted(provider_client, db) -> None:
    client = await provider_client(SHOP_TOML, **READING)
    sent = shopify_headers(**{"X-Request-Id": "ok-id"})
    raw = build(path="/pos/shopify/ingest", body=SHOP_BODY, tenant=None, signature=None, content_type=None,
                headers=[*sent.items(), ("X-Debug", b"caf\xe9 latin-1")])
    answer = await exchange(client.host, client.port, raw)
    assert answer is not None and answer.status == 201, answer
    [event] = await events(client, SHOP_DOMAIN)
    assert event["headers"]["x-request-id"] == "ok-id" and "x-debug" not in event["headers"]
    assert await dropped(client) == {"size": 0, "secret": 0, "encoding": 1}


# --- the size bound ------------------------------------------------------------------------------


async def test_an_oversized_set_of_headers_is_accepted_the_schemes_own_kept_the_rest_dropped_and_counted(
    provider_client, db,
) -> None:
    sent = shopify_headers(**{"User-Agent": "U" * 3000, "X-Request-Id": "R" * 3000, "X-Debug": "D" * 3000})
    own = {name: value for name, value in sent.items()
           if name.startswith("X-Shopify-") or name == "Content-Type"}
    room = sum(len(name) + len(value) for name, value in own.items())
    client = await provider_client(SHOP_TOML, headers_max_bytes=room + 100, **READING)
    resp = await client.post("/pos/shopify/ingest", data=SHOP_BODY, headers=sent)
    assert resp.status == 201, await resp.text()
    [event] = await events(client, SHOP_DOMAIN)
    assert event["headers"] == {name.lower(): value for name, value in own.items()}
    assert base64.b64decode(event["body_base64"]) == SHOP_BODY
    assert await dropped(client) == {"size": 3, "secret": 0, "encoding": 0}


async def test_the_default_bound_holds_4096_bytes(provider_client, db) -> None:
    client = await provider_client(SHOP_TOML, **READING)
    sent = shopify_headers(**{"X-Request-Id": "R" * 2000, "X-Debug": "D" * 2000})
    assert (await client.post("/pos/shopify/ingest", data=SHOP_BODY, headers=sent)).status == 201
    [event] = await events(client, SHOP_DOMAIN)
    total = sum(len(name) + len(value.encode()) for name, value in event["headers"].items())
    assert event["headers"]["x-request-id"] == "R" * 2000  # listed first: it fits
    assert "x-debug" not in event["headers"] and total <= 4096
    assert await dropped(client) == {"size": 1, "secret": 0, "encoding": 0}


# --- a forged request ----------------------------------------------------------------------------


async def test_a_forged_request_stores_nothing_and_counts_no_dropped_header(provider_client, db) -> None:
    client = await provider_client(SHOP_TOML, headers_max_bytes=64, **READING)
    sent = shopify_headers(**{"X-Shopify-Hmac-Sha256": shopify_signature("not-the-secret", SHOP_BODY),
                              "X-Request-Id": f"Bearer {READ_TOKEN}", "X-Debug": "D" * 500})
    resp = await client.post("/pos/shopify/ingest", data=SHOP_BODY, headers=sent)
    assert resp.status == 401
    assert await stored(db) == []
    assert await events(client, SHOP_DOMAIN) == []
    assert await dropped(client) == NOTHING_DROPPED
    # The same request signed rightly is kept, and only then counted: the counters work.
    good = {**sent, "X-Shopify-Hmac-Sha256": shopify_signature(SHOP_SECRET, SHOP_BODY)}
    assert (await client.post("/pos/shopify/ingest", data=SHOP_BODY, headers=good)).status == 201
    counts = await dropped(client)
    assert counts["secret"] == 1 and counts["size"] >= 1


async def test_a_forged_batch_stores_nothing_and_counts_no_dropped_header(make_client, db) -> None:
    client = await make_client(headers_max_bytes=16, **READING)
    body = orjson.dumps([{"event_id": "f-1"}])
    resp = await client.post("/pos/terminal/ingest/batch", data=body, headers={
        "Content-Type": "application/json", "X-Tenant-Id": "pos-7", "X-Signature": sign(body, "wrong-secret"),
        "User-Agent": f"Bearer {READ_TOKEN}"})
    assert resp.status == 401
    assert await stored(db) == []
    assert await dropped(client) == NOTHING_DROPPED


async def test_a_verified_request_refused_for_its_tenant_or_rate_counts_no_dropped_header(provider_client, db) -> None:
    # Shopify names the tenant in X-Shopify-Shop-Domain: without it, the signed request is 400.
    client = await provider_client(SHOP_TOML, headers_max_bytes=64, rate_limit_per_sec=0.001, rate_limit_burst=1,
                                   **READING)
    sent = shopify_headers(**{"X-Request-Id": f"Bearer {READ_TOKEN}", "X-Debug": "D" * 500})
    no_tenant = {k: v for k, v in sent.items() if k != "X-Shopify-Shop-Domain"}
    assert (await client.post("/pos/shopify/ingest", data=SHOP_BODY, headers=no_tenant)).status == 400
    assert await dropped(client) == NOTHING_DROPPED
    assert (await client.post("/pos/shopify/ingest", data=SHOP_BODY, headers=sent)).status == 201
    after_one = await dropped(client)
    assert after_one["secret"] == 1 and after_one["size"] >= 1
    # The bucket is empty now: the same tenant's next request is 429, and keeps (and counts) nothing.
    again = {**sent, "X-Shopify-Webhook-Id": "another-delivery"}
    assert (await client.post("/pos/shopify/ingest", data=SHOP_BODY, headers=again)).status == 429
    assert await dropped(client) == after_one
    assert len(await stored(db)) == 1


# --- export ----------------------------------------------------------------------------------------


async def test_export_ndjson_carries_the_headers_as_get_events_shows_them(provider_client, db, database_url) -> None:
    client = await provider_client(SHOP_TOML, **READING)
    sent = shopify_headers(**{"X-Request-Id": "req-export"})
    assert (await client.post("/pos/shopify/ingest", data=SHOP_BODY, headers=sent)).status == 201
    await db.execute("INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body)"
                     f" VALUES ('{SHOP_DOMAIN}', 'old', 'k', decode(repeat('00', 32), 'hex'), '{{}}')")
    result = await asyncio.to_thread(run_cli, "export", "--tenant", SHOP_DOMAIN, "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["headers"] for line in lines] == [{name.lower(): value for name, value in sent.items()}, None]
    assert [line["headers"] for line in lines] == [e["headers"] for e in await events(client, SHOP_DOMAIN)]
