"""scheme = "square": base64(HMAC-SHA256(key, notification_url + body)), against real PostgreSQL.

Proven against code we did not write: Square's published vector (the one in
square-python-sdk's webhooks helper tests) and squareup's own
``verify_signature``, which must agree with every signature posted here.
"""

from __future__ import annotations

import orjson
import pytest
from square.utils.webhooks_helper import verify_signature

from tests.helpers import assert_error, stored
from tests.provider_helpers import events_total, payload, square_signature

URL = "/pos/square/ingest"
NOTIFICATION_URL = "https://ingest.example.com/pos/square/ingest"
KEY_NEW = "sq-sig-key-new-3f9a"
KEY_OLD = "sq-sig-key-old-71c2"
ENV = {"SQUARE_KEY_NEW": KEY_NEW, "SQUARE_KEY_OLD": KEY_OLD}
TOML = f"""
[sources.square]
scheme = "square"
secrets = ["env:SQUARE_KEY_NEW", "env:SQUARE_KEY_OLD"]
notification_url = "{NOTIFICATION_URL}"
"""
BODY = payload("square-order-created")
HEADER = "x-square-hmacsha256-signature"

# Square's published vector (square-python-sdk, tests/utilities/test_webhooks_helper.py).
VECTOR_BODY = (
    b'{"merchant_id":"MLEFBHHSJGVHD","type":"webhooks.test_notification",'
    b'"event_id":"ac3ac95b-f97d-458c-a6e6-18981597e05f","created_at":"2022-07-13T20:30:59.037339943Z",'
    b'"data":{"type":"webhooks","id":"bc368e64-01aa-407e-b46e-3231809b1129"}}'
)
VECTOR_SIGNATURE = "GF4YkrJgGBDZ9NIYbNXBnMzqb2HoL4RW/S6vkZ9/2N4="
VECTOR_KEY = "Ibxx_5AKakO-3qeNVR61Dw"
VECTOR_URL = "https://webhook.site/679a4f3a-dcfa-49ee-bac5-9d0edad886b9"


def signed(body: bytes = BODY, key: str = KEY_NEW, **extra: str) -> dict[str, str]:
    signature = square_signature(key, NOTIFICATION_URL, body)
    # The provider's own library agrees before the service is asked.
    assert verify_signature(request_body=body.decode(), signature_header=signature,
                            signature_key=key, notification_url=NOTIFICATION_URL)
    return {"Content-Type": "application/json", HEADER: signature, **extra}


async def test_published_vector_is_accepted_with_its_merchant_and_event_id(provider_client, db) -> None:
    assert verify_signature(request_body=VECTOR_BODY.decode(), signature_header=VECTOR_SIGNATURE,
                            signature_key=VECTOR_KEY, notification_url=VECTOR_URL)
    client = await provider_client(
        f'[sources.square]\nscheme = "square"\nsecrets = ["{VECTOR_KEY}"]\nnotification_url = "{VECTOR_URL}"\n'
    )
    resp = await client.post(URL, data=VECTOR_BODY, headers={"Content-Type": "application/json", HEADER: VECTOR_SIGNATURE})
    assert resp.status == 201, await resp.text()
    row = (await stored(db))[0]
    assert (row["tenant_id"], row["source"], row["idempotency_key"]) == (
        "MLEFBHHSJGVHD", "square", "ac3ac95b-f97d-458c-a6e6-18981597e05f")
    assert bytes(row["body"]) == VECTOR_BODY


async def test_vector_with_another_notification_url_is_401(provider_client, db) -> None:
    client = await provider_client(
        f'[sources.square]\nscheme = "square"\nsecrets = ["{VECTOR_KEY}"]\nnotification_url = "{VECTOR_URL}x"\n'
    )
    resp = await client.post(URL, data=VECTOR_BODY, headers={"Content-Type": "application/json", HEADER: VECTOR_SIGNATURE})
    await assert_error(resp, 401, "invalid_signature")
    assert await stored(db) == []


async def test_accepted_then_a_retry_with_changed_unsigned_headers_is_a_duplicate(provider_client, db) -> None:
    client = await provider_client(TOML, ENV)
    first = await client.post(URL, data=BODY, headers=signed())
    assert first.status == 201
    event_id = (await first.json())["event_id"]
    retry = await client.post(URL, data=BODY, headers=signed(**{"square-retry-number": "1", "square-retry-reason": "http_timeout"}))
    assert retry.status == 200
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert (await retry.json())["event_id"] == event_id
    rows = await stored(db)
    assert len(rows) == 1
    doc = orjson.loads(BODY)
    assert (rows[0]["tenant_id"], rows[0]["idempotency_key"]) == (doc["merchant_id"], doc["event_id"])
    assert bytes(rows[0]["body"]) == BODY


async def test_rotation_both_keys_verify_and_a_removed_one_does_not(provider_client, db) -> None:
    client = await provider_client(TOML, ENV)
    assert (await client.post(URL, data=BODY, headers=signed(key=KEY_OLD))).status == 201
    other = BODY.replace(b"1f2c6a47", b"2f2c6a47")
    assert (await client.post(URL, data=other, headers=signed(other, key=KEY_NEW))).status == 201
    rotated = await provider_client(TOML.replace(', "env:SQUARE_KEY_OLD"', ""), ENV)
    third = BODY.replace(b"1f2c6a47", b"3f2c6a47")
    await assert_error(await rotated.post(URL, data=third, headers=signed(third, key=KEY_OLD)), 401, "invalid_signature")
    assert len(await stored(db)) == 2


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not base64!",
        "c2hvcnQ=",                      # base64, but not a 32-byte digest
        "GF4YkrJgGBDZ9NIYbNXBnMzqb2HoL4RW/S6vkZ9/2N4=",  # well-formed, wrong
        "caf\u00e9",
        "sha256=" + "0" * 64,
    ],
)
async def test_wrong_or_malformed_signature_is_401(provider_client, db, value: str) -> None:
    client = await provider_client(TOML, ENV)
    resp = await client.post(URL, data=BODY, headers={"Content-Type": "application/json", HEADER: value})
    await assert_error(resp, 401, "invalid_signature")
    assert await stored(db) == []


async def test_missing_signature_is_401_and_counted(provider_client, db) -> None:
    client = await provider_client(TOML, ENV)
    resp = await client.post(URL, data=BODY, headers={"Content-Type": "application/json"})
    await assert_error(resp, 401, "invalid_signature")
    assert (await events_total(client, "square")) == {"rejected_signature": 1.0}


async def test_tenant_header_wins_over_merchant_id(provider_client, db) -> None:
    client = await provider_client(TOML, ENV)
    assert (await client.post(URL + "?tenant=from-query", data=BODY, headers=signed())).status == 201
    assert (await client.post(URL, data=BODY, headers=signed(**{"X-Tenant-Id": "from-header"}))).status == 201
    assert [r["tenant_id"] for r in await stored(db)] == ["from-query", "from-header"]


async def test_body_without_merchant_id_needs_a_tenant(provider_client, db) -> None:
    doc = orjson.loads(BODY)
    del doc["merchant_id"]
    body = orjson.dumps(doc)
    client = await provider_client(TOML, ENV)
    await assert_error(await client.post(URL, data=body, headers=signed(body)), 400, "invalid_tenant")
    assert (await client.post(URL, data=body, headers=signed(body, **{"X-Tenant-Id": "t-1"}))).status == 201


async def test_body_without_event_id_is_400(provider_client, db) -> None:
    doc = orjson.loads(BODY)
    del doc["event_id"]
    body = orjson.dumps(doc)
    client = await provider_client(TOML, ENV)
    await assert_error(await client.post(URL, data=body, headers=signed(body)), 400, "invalid_idempotency_key")
    assert await stored(db) == []


async def test_same_event_id_with_a_different_body_is_422(provider_client, db) -> None:
    client = await provider_client(TOML, ENV)
    assert (await client.post(URL, data=BODY, headers=signed())).status == 201
    changed = BODY.replace(b'"OPEN"', b'"COMPLETED"')
    await assert_error(await client.post(URL, data=changed, headers=signed(changed)), 422, "idempotency_key_reused")
    assert bytes((await stored(db))[0]["body"]) == BODY
