"""A sources file next to the generic contract: undeclared sources unchanged,
strict_sources, the hmac-sha256 scheme with its own secrets, metrics per source."""

from __future__ import annotations

import hashlib

from tests.helpers import SECRET, assert_error, headers, sign, stored
from tests.provider_helpers import events_total, payload, shopify_signature

SHOPIFY = """
[sources.shopify]
scheme = "shopify"
secrets = ["shop-secret"]
"""
BODY = b'{"type":"payment.updated","id":"evt_1"}'


def shopify_headers(body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Shopify-Hmac-Sha256": shopify_signature("shop-secret", body),
        "X-Shopify-Shop-Domain": "shop.myshopify.com",
        "X-Shopify-Webhook-Id": "w-1",
    }


async def test_an_undeclared_source_keeps_the_generic_scheme_and_webhook_secret(provider_client, db) -> None:
    client = await provider_client(SHOPIFY)
    resp = await client.post("/pos/square/ingest", data=BODY, headers=headers(BODY))
    assert resp.status == 201
    again = await client.post("/pos/square/ingest", data=BODY, headers=headers(BODY))
    assert again.status == 200
    await assert_error(await client.post("/pos/square/ingest", data=BODY, headers=headers(BODY, tenant=None)), 400, "invalid_tenant")
    # A declared source does not accept the generic signature.
    await assert_error(await client.post("/pos/shopify/ingest", data=BODY, headers=headers(BODY)), 401, "invalid_signature")
    rows = await stored(db)
    assert [(r["tenant_id"], r["source"], r["idempotency_key"]) for r in rows] == [
        ("tenant-1", "square", hashlib.sha256(BODY).hexdigest())]


async def test_strict_sources_answers_404_for_an_undeclared_source(provider_client, db) -> None:
    client = await provider_client("strict_sources = true\n" + SHOPIFY, webhook_secret="")
    resp = await client.post("/pos/square/ingest", data=BODY, headers=headers(BODY))
    doc = await assert_error(resp, 404, "unknown_source")
    assert "square" in doc["detail"]
    assert (await client.post("/pos/shopify/ingest", data=BODY, headers=shopify_headers(BODY))).status == 201
    assert [r["source"] for r in await stored(db)] == ["shopify"]
    assert await events_total(client, "_other") == {"rejected_input": 1.0}
    assert await events_total(client, "square") == {}


async def test_declared_hmac_sha256_source_uses_its_own_rotating_secrets(provider_client, db) -> None:
    toml = '[sources.pos]\nscheme = "hmac-sha256"\nsecrets = ["env:POS_NEW", "pos-old"]\n'
    client = await provider_client(toml, {"POS_NEW": "pos-new"})
    url = "/pos/pos/ingest"
    first = b'{"n":1}'
    second = b'{"n":2}'
    assert (await client.post(url, data=first, headers=headers(first, **{"X-Signature": sign(first, "pos-old")}))).status == 201
    assert (await client.post(url, data=second, headers=headers(second, **{"X-Signature": sign(second, "pos-new")}))).status == 201
    # WEBHOOK_SECRET does not verify a declared source.
    third = b'{"n":3}'
    await assert_error(await client.post(url, data=third, headers=headers(third, **{"X-Signature": sign(third, SECRET)})), 401, "invalid_signature")
    # Same key rules as the generic contract: Idempotency-Key, else the body's SHA-256.
    keyed = await client.post(url, data=third, headers=headers(third, **{"X-Signature": sign(third, "pos-new"), "Idempotency-Key": "k-3"}))
    assert keyed.status == 201
    assert [r["idempotency_key"] for r in await stored(db)] == [
        hashlib.sha256(first).hexdigest(), hashlib.sha256(second).hexdigest(), "k-3"]
    missing_tenant = await client.post(url, data=first, headers=headers(first, tenant=None, **{"X-Signature": sign(first, "pos-new")}))
    await assert_error(missing_tenant, 400, "invalid_tenant")


async def test_metrics_count_outcomes_per_provider_source(provider_client, db) -> None:
    toml = SHOPIFY + '\n[sources.toast]\nscheme = "toast"\nsecrets = ["t"]\n'
    client = await provider_client(toml)
    body = payload("shopify-orders-paid")
    await client.post("/pos/shopify/ingest", data=body, headers=shopify_headers(body))
    await client.post("/pos/shopify/ingest", data=body, headers=shopify_headers(body))
    changed = body.replace(b"1088", b"1089")
    await client.post("/pos/shopify/ingest", data=changed, headers=shopify_headers(changed))   # same webhook id: conflict
    await client.post("/pos/toast/ingest", data=body, headers={"Content-Type": "application/json", "Toast-Signature": "x"})
    await client.post("/pos/generic/ingest", data=BODY, headers=headers(BODY))
    assert await events_total(client, "shopify") == {"accepted": 1.0, "duplicate": 1.0, "conflict": 1.0}
    assert await events_total(client, "toast") == {"rejected_signature": 1.0}
    assert await events_total(client, "generic") == {"accepted": 1.0}


async def test_a_provider_request_with_a_non_json_media_type_is_415(provider_client, db) -> None:
    client = await provider_client(SHOPIFY)
    body = b'{"a":1}'
    resp = await client.post("/pos/shopify/ingest", data=body, headers={**shopify_headers(body), "Content-Type": "text/plain"})
    await assert_error(resp, 415, "unsupported_media_type")


async def test_an_invalid_tenant_override_is_400(provider_client, db) -> None:
    client = await provider_client(SHOPIFY)
    body = b'{"a":1}'
    resp = await client.post("/pos/shopify/ingest", data=body, headers={**shopify_headers(body), "X-Tenant-Id": "bad tenant!"})
    await assert_error(resp, 400, "invalid_tenant")



ALL_SCHEMES = """
[sources.square]
scheme = "square"
secrets = ["k"]
notification_url = "https://x.example/pos/square/ingest"
[sources.shopify]
scheme = "shopify"
secrets = ["k"]
[sources.stripe]
scheme = "stripe"
secrets = ["whsec_k"]
[sources.billing]
scheme = "standard-webhooks"
secrets = ["whsec_a2V5LWtleS1rZXk="]
[sources.toast]
scheme = "toast"
secrets = ["k"]
[sources.clover]
scheme = "clover"
secrets = ["k"]
[sources.pos]
scheme = "hmac-sha256"
secrets = ["k"]
"""
SIGNATURE_HEADERS = {
    "square": ["x-square-hmacsha256-signature"],
    "shopify": ["X-Shopify-Hmac-Sha256"],
    "stripe": ["Stripe-Signature"],
    "billing": ["webhook-signature", "webhook-timestamp", "webhook-id"],
    "toast": ["Toast-Signature"],
    "clover": ["X-Clover-Auth"],
    "pos": ["X-Signature"],
}
GARBAGE = ["=", ",", "t=,v1=", "v1,", "v1,=", " ", "\u00ff\u00fe", "a" * 2000, "t=1,v1=" + "0" * 64 + ",v1",
           "==", "\t", "sha256=", "v1,AAAA v1,", "t=99999999999999999999999,v1=00"]


async def test_garbage_in_any_signature_header_is_401_never_500(provider_client, db) -> None:
    client = await provider_client(ALL_SCHEMES)
    body = b'{"id":"evt_1","event_id":"e1","guid":"g1","merchant_id":"M1","timestamp":"2026-01-01T00:00:00Z"}'
    for source, names in SIGNATURE_HEADERS.items():
        for value in GARBAGE:
            headers = {"Content-Type": "application/json", "X-Tenant-Id": "t-1",
                       "webhook-id": "msg_1", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"}
            for name in names:
                headers[name] = value
            resp = await client.post(f"/pos/{source}/ingest", data=body, headers=headers)
            assert resp.status == 401, (source, value, resp.status, await resp.text())
    assert await stored(db) == []
