"""scheme = "standard-webhooks": webhook-id / webhook-timestamp / webhook-signature, against real PostgreSQL.

Proven against the specification's published vector and the standardwebhooks
library (Webhook.sign produces, Webhook.verify checks).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from tests.helpers import assert_error, stored
from tests.provider_helpers import FakeClock, payload

URL = "/pos/billing/ingest?tenant=shop-7"
SECRET_NEW = "whsec_" + base64.b64encode(b"standard-webhooks-key-new-32byte").decode()
SECRET_OLD = "whsec_" + base64.b64encode(b"standard-webhooks-key-old-32byte").decode()
ENV = {"SW_NEW": SECRET_NEW, "SW_OLD": SECRET_OLD}
TOML = """
[sources.billing]
scheme = "standard-webhooks"
secrets = ["env:SW_NEW", "env:SW_OLD"]
"""
BODY = payload("standard-webhooks-invoice-paid")
NOW = 1_795_432_000
MSG_ID = "msg_2pQx7Lk9ZtRb4WcN8vY1hG3J"

# The specification's published vector.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def signed(body: bytes = BODY, secret: str = SECRET_NEW, msg_id: str = MSG_ID, timestamp: int = NOW) -> dict[str, str]:
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": Webhook(secret).sign(msg_id, moment, body.decode()),
    }


async def test_published_vector_is_accepted(provider_client, db) -> None:
    client = await provider_client(
        f'[sources.billing]\nscheme = "standard-webhooks"\nsecrets = ["{VECTOR_SECRET}"]\n',
        clock=FakeClock(VECTOR_TIMESTAMP),
    )
    headers = {"Content-Type": "application/json", "webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TIMESTAMP), "webhook-signature": VECTOR_SIGNATURE}
    resp = await client.post(URL, data=VECTOR_BODY, headers=headers)
    assert resp.status == 201, await resp.text()
    row = (await stored(db))[0]
    assert (row["tenant_id"], row["idempotency_key"], bytes(row["body"])) == ("shop-7", VECTOR_ID, VECTOR_BODY)


async def test_library_signed_delivery_is_accepted_and_the_library_agrees(provider_client, db) -> None:
    headers = signed()
    # The library's own verify (with the real clock: the signature is checked against its own time).
    live = signed(timestamp=int(datetime.now(tz=UTC).timestamp()))
    Webhook(SECRET_NEW).verify(BODY, live)
    client = await provider_client(TOML, ENV, clock=FakeClock(NOW))
    assert (await client.post(URL, data=BODY, headers=headers)).status == 201
    assert (await stored(db))[0]["idempotency_key"] == MSG_ID


async def test_a_retry_with_a_new_timestamp_is_a_duplicate(provider_client, db) -> None:
    clock = FakeClock(NOW)
    client = await provider_client(TOML, ENV, clock=clock)
    assert (await client.post(URL, data=BODY, headers=signed())).status == 201
    clock.now = NOW + 7200
    retry = await client.post(URL, data=BODY, headers=signed(timestamp=NOW + 7199))
    assert retry.status == 200
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert len(await stored(db)) == 1


async def test_any_signature_in_the_list_may_match(provider_client, db) -> None:
    client = await provider_client(TOML, ENV, clock=FakeClock(NOW))
    headers = signed()
    wrong = signed(secret="whsec_" + base64.b64encode(b"x" * 24).decode())["webhook-signature"]
    headers["webhook-signature"] = f"v1a,ZmFrZQ== {wrong} {headers['webhook-signature']}"
    assert (await client.post(URL, data=BODY, headers=headers)).status == 201


async def test_rotation_both_secrets_verify_and_a_removed_one_does_not(provider_client, db) -> None:
    client = await provider_client(TOML, ENV, clock=FakeClock(NOW))
    assert (await client.post(URL, data=BODY, headers=signed(secret=SECRET_OLD))).status == 201
    assert (await client.post(URL, data=BODY, headers=signed(secret=SECRET_NEW, msg_id="msg_2"))).status == 201
    rotated = await provider_client(TOML.replace(', "env:SW_OLD"', ""), ENV, clock=FakeClock(NOW))
    resp = await rotated.post(URL, data=BODY, headers=signed(secret=SECRET_OLD, msg_id="msg_3"))
    await assert_error(resp, 401, "invalid_signature")
    assert len(await stored(db)) == 2


@pytest.mark.parametrize(
    "offset, status",
    [(300, 201), (301, 401), (-300, 201), (-301, 401)],
    ids=["stale-boundary", "stale", "future-boundary", "future"],
)
async def test_replay_window_is_exact(provider_client, db, offset: int, status: int) -> None:
    client = await provider_client(TOML, ENV, clock=FakeClock(NOW + offset))
    resp = await client.post(URL, data=BODY, headers=signed())
    assert resp.status == status, await resp.text()
    assert len(await stored(db)) == (1 if status == 201 else 0)


@pytest.mark.parametrize(
    "name, value",
    [
        ("webhook-signature", ""),
        ("webhook-signature", "v1"),                       # no comma
        ("webhook-signature", "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
        ("webhook-signature", "v1,not-base64!"),
        ("webhook-signature", "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
        ("webhook-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),  # well-formed, wrong
        ("webhook-signature", "v1,caf\u00e9"),
        ("webhook-timestamp", "soon"),
        ("webhook-timestamp", "-5"),
        ("webhook-timestamp", "1e9"),
        ("webhook-id", "msg \u00e9"),
        ("webhook-id", ""),
    ],
)
async def test_malformed_or_wrong_headers_are_401(provider_client, db, name: str, value: str) -> None:
    client = await provider_client(TOML, ENV, clock=FakeClock(NOW))
    headers = signed()
    headers[name] = value
    await assert_error(await client.post(URL, data=BODY, headers=headers), 401, "invalid_signature")
    assert await stored(db) == []


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
async def test_a_missing_header_is_401(provider_client, db, missing: str) -> None:
    client = await provider_client(TOML, ENV, clock=FakeClock(NOW))
    headers = signed()
    del headers[missing]
    await assert_error(await client.post(URL, data=BODY, headers=headers), 401, "invalid_signature")


async def test_the_scheme_names_no_tenant_so_one_must_be_sent(provider_client, db) -> None:
    client = await provider_client(TOML, ENV, clock=FakeClock(NOW))
    resp = await client.post("/pos/billing/ingest", data=BODY, headers=signed())
    await assert_error(resp, 400, "invalid_tenant")
    assert await stored(db) == []
