"""scheme = "shopify" and scheme = "toast", against real PostgreSQL.

Neither provider publishes a Python verifier on PyPI, so the signers in
tests/provider_helpers.py are written out from their documentation
(Shopify: base64 HMAC-SHA256 of the body; Toast: base64 HMAC-SHA256 of the
body followed by the body's timestamp field, per Toast's Java sample).
"""

from __future__ import annotations

from datetime import datetime

import orjson
import pytest

from tests.helpers import assert_error, stored
from tests.provider_helpers import FakeClock, payload, shopify_signature, toast_signature

# --- shopify -----------------------------------------------------------------------

SHOPIFY_URL = "/pos/shopify/ingest"
SHOPIFY_TOML = """
[sources.shopify]
scheme = "shopify"
secrets = ["env:SHOPIFY_NEW", "shpss_literal_old_secret"]
"""
SHOPIFY_ENV = {"SHOPIFY_NEW": "shpss_new_secret_4d1f"}
SHOPIFY_BODY = payload("shopify-orders-paid")
WEBHOOK_ID = "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"


def shopify_headers(body: bytes = SHOPIFY_BODY, secret: str = "shpss_new_secret_4d1f", **extra: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Shopify-Hmac-Sha256": shopify_signature(secret, body),
        "X-Shopify-Topic": "orders/paid",
        "X-Shopify-Shop-Domain": "corner-cafe.myshopify.com",
        "X-Shopify-Webhook-Id": WEBHOOK_ID,
        "X-Shopify-Event-Id": "98880550-7158-44d4-b7cd-2c97c8a091b5",
        "X-Shopify-Triggered-At": "2026-11-22T16:41:09.000Z",
        **extra,
    }


async def test_shopify_accepted_keyed_by_webhook_id_for_the_shop(provider_client, db) -> None:
    client = await provider_client(SHOPIFY_TOML, SHOPIFY_ENV)
    resp = await client.post(SHOPIFY_URL, data=SHOPIFY_BODY, headers=shopify_headers())
    assert resp.status == 201, await resp.text()
    row = (await stored(db))[0]
    assert (row["tenant_id"], row["idempotency_key"]) == ("corner-cafe.myshopify.com", WEBHOOK_ID)
    assert bytes(row["body"]) == SHOPIFY_BODY


async def test_shopify_retry_with_a_new_triggered_at_is_a_duplicate(provider_client, db) -> None:
    client = await provider_client(SHOPIFY_TOML, SHOPIFY_ENV)
    assert (await client.post(SHOPIFY_URL, data=SHOPIFY_BODY, headers=shopify_headers())).status == 201
    retry = await client.post(SHOPIFY_URL, data=SHOPIFY_BODY,
                              headers=shopify_headers(**{"X-Shopify-Triggered-At": "2026-11-22T16:45:00.000Z"}))
    assert retry.status == 200
    assert len(await stored(db)) == 1


async def test_shopify_falls_back_to_the_event_id(provider_client, db) -> None:
    client = await provider_client(SHOPIFY_TOML, SHOPIFY_ENV)
    headers = shopify_headers()
    del headers["X-Shopify-Webhook-Id"]
    assert (await client.post(SHOPIFY_URL, data=SHOPIFY_BODY, headers=headers)).status == 201
    assert (await stored(db))[0]["idempotency_key"] == "98880550-7158-44d4-b7cd-2c97c8a091b5"
    del headers["X-Shopify-Event-Id"]
    await assert_error(await client.post(SHOPIFY_URL, data=SHOPIFY_BODY, headers=headers), 400, "invalid_idempotency_key")


async def test_shopify_rotation_literal_and_env_secrets_both_verify_and_a_removed_one_does_not(provider_client, db) -> None:
    client = await provider_client(SHOPIFY_TOML, SHOPIFY_ENV)
    assert (await client.post(SHOPIFY_URL, data=SHOPIFY_BODY, headers=shopify_headers(secret="shpss_literal_old_secret"))).status == 201
    second = shopify_headers(**{"X-Shopify-Webhook-Id": "w-2"})
    assert (await client.post(SHOPIFY_URL, data=SHOPIFY_BODY, headers=second)).status == 201
    rotated = await provider_client(SHOPIFY_TOML.replace(', "shpss_literal_old_secret"', ""), SHOPIFY_ENV)
    third = shopify_headers(secret="shpss_literal_old_secret", **{"X-Shopify-Webhook-Id": "w-3"})
    await assert_error(await rotated.post(SHOPIFY_URL, data=SHOPIFY_BODY, headers=third), 401, "invalid_signature")
    assert len(await stored(db)) == 2


@pytest.mark.parametrize("value", [None, "", "%%%", "c2hvcnQ=", shopify_signature("wrong", SHOPIFY_BODY), "\u00e9t\u00e9"])
async def test_shopify_missing_malformed_or_wrong_signature_is_401(provider_client, db, value: str | None) -> None:
    client = await provider_client(SHOPIFY_TOML, SHOPIFY_ENV)
    headers = shopify_headers()
    if value is None:
        del headers["X-Shopify-Hmac-Sha256"]
    else:
        headers["X-Shopify-Hmac-Sha256"] = value
    await assert_error(await client.post(SHOPIFY_URL, data=SHOPIFY_BODY, headers=headers), 401, "invalid_signature")
    assert await stored(db) == []


# --- toast -------------------------------------------------------------------------

TOAST_URL = "/pos/toast/ingest"
TOAST_TOML = """
[sources.toast]
scheme = "toast"
secrets = ["env:TOAST_NEW", "env:TOAST_OLD"]
tolerance_seconds = 300
"""
TOAST_ENV = {"TOAST_NEW": "toast-secret-new", "TOAST_OLD": "toast-secret-old"}
TOAST_BODY = payload("toast-order-created")
TOAST_AT = datetime.fromisoformat(orjson.loads(TOAST_BODY)["timestamp"]).timestamp()
RESTAURANT = "7a3d5e90-1c2b-4f8e-a6d4-e2b9c0f17a55"


def toast_headers(body: bytes = TOAST_BODY, secret: str = "toast-secret-new", **extra: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Toast-Signature": toast_signature(secret, body),
        "Toast-Restaurant-External-ID": RESTAURANT,
        "Toast-Event-Type": "order_created",
        "Toast-Attempt-Number": "1",
        **extra,
    }


async def test_toast_signs_body_then_the_body_timestamp(provider_client, db) -> None:
    client = await provider_client(TOAST_TOML, TOAST_ENV, clock=FakeClock(TOAST_AT + 2))
    resp = await client.post(TOAST_URL, data=TOAST_BODY, headers=toast_headers())
    assert resp.status == 201, await resp.text()
    row = (await stored(db))[0]
    assert (row["tenant_id"], row["idempotency_key"]) == (RESTAURANT, orjson.loads(TOAST_BODY)["guid"])
    assert bytes(row["body"]) == TOAST_BODY


async def test_toast_body_alone_signed_is_401(provider_client, db) -> None:
    client = await provider_client(TOAST_TOML, TOAST_ENV, clock=FakeClock(TOAST_AT))
    headers = toast_headers(**{"Toast-Signature": shopify_signature("toast-secret-new", TOAST_BODY)})
    await assert_error(await client.post(TOAST_URL, data=TOAST_BODY, headers=headers), 401, "invalid_signature")


async def test_toast_retry_with_a_new_attempt_number_is_a_duplicate(provider_client, db) -> None:
    client = await provider_client(TOAST_TOML, TOAST_ENV, clock=FakeClock(TOAST_AT))
    assert (await client.post(TOAST_URL, data=TOAST_BODY, headers=toast_headers())).status == 201
    retry = await client.post(TOAST_URL, data=TOAST_BODY, headers=toast_headers(**{"Toast-Attempt-Number": "2"}))
    assert retry.status == 200
    assert len(await stored(db)) == 1


async def test_toast_rotation(provider_client, db) -> None:
    client = await provider_client(TOAST_TOML, TOAST_ENV, clock=FakeClock(TOAST_AT))
    assert (await client.post(TOAST_URL, data=TOAST_BODY, headers=toast_headers(secret="toast-secret-old"))).status == 201
    rotated = await provider_client(TOAST_TOML.replace(', "env:TOAST_OLD"', ""), TOAST_ENV, clock=FakeClock(TOAST_AT))
    other = TOAST_BODY.replace(b"4c1e9b27", b"5c1e9b27")
    await assert_error(await rotated.post(TOAST_URL, data=other, headers=toast_headers(other, secret="toast-secret-old")),
                       401, "invalid_signature")
    assert (await rotated.post(TOAST_URL, data=other, headers=toast_headers(other))).status == 201


@pytest.mark.parametrize(
    "offset, status",
    [(300, 201), (301, 401), (-300, 201), (-301, 401)],
    ids=["stale-boundary", "stale", "future-boundary", "future"],
)
async def test_toast_replay_window_on_the_signed_timestamp_is_exact(provider_client, db, offset: int, status: int) -> None:
    client = await provider_client(TOAST_TOML, TOAST_ENV, clock=FakeClock(TOAST_AT + offset))
    resp = await client.post(TOAST_URL, data=TOAST_BODY, headers=toast_headers())
    assert resp.status == status, await resp.text()


@pytest.mark.parametrize("value", [None, "", "not base64!", "c2hvcnQ=", toast_signature("wrong", TOAST_BODY)])
async def test_toast_missing_malformed_or_wrong_signature_is_401(provider_client, db, value: str | None) -> None:
    client = await provider_client(TOAST_TOML, TOAST_ENV, clock=FakeClock(TOAST_AT))
    headers = toast_headers()
    if value is None:
        del headers["Toast-Signature"]
    else:
        headers["Toast-Signature"] = value
    await assert_error(await client.post(TOAST_URL, data=TOAST_BODY, headers=headers), 401, "invalid_signature")
    assert await stored(db) == []


@pytest.mark.parametrize("body", [b"not json", b'{"guid":"g-1"}', b'{"guid":"g-1","timestamp":"yesterday"}', b'{"timestamp":5}'])
async def test_toast_body_without_a_signed_timestamp_is_401(provider_client, db, body: bytes) -> None:
    client = await provider_client(TOAST_TOML, TOAST_ENV, clock=FakeClock(TOAST_AT))
    headers = toast_headers(**{"Toast-Signature": shopify_signature("toast-secret-new", body)})
    await assert_error(await client.post(TOAST_URL, data=body, headers=headers), 401, "invalid_signature")


async def test_toast_without_restaurant_header_needs_a_tenant(provider_client, db) -> None:
    client = await provider_client(TOAST_TOML, TOAST_ENV, clock=FakeClock(TOAST_AT))
    headers = toast_headers()
    del headers["Toast-Restaurant-External-ID"]
    await assert_error(await client.post(TOAST_URL, data=TOAST_BODY, headers=headers), 400, "invalid_tenant")
    assert (await client.post(TOAST_URL + "?tenant=r-1", data=TOAST_BODY, headers=headers)).status == 201
