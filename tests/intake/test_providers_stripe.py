"""scheme = "stripe": Stripe-Signature t=...,v1=... over "{t}.{body}", against real PostgreSQL.

Headers are produced by stripe's own library (WebhookSignature.generate_signature_header).
"""

from __future__ import annotations

import orjson
import pytest
from stripe import WebhookSignature

from tests.helpers import assert_error, stored
from tests.provider_helpers import FakeClock, events_total, payload

URL = "/pos/stripe/ingest"
SECRET_NEW = "whsec_test_new_9f8e7d6c5b4a"
SECRET_OLD = "whsec_test_old_1a2b3c4d5e6f"
ENV = {"STRIPE_NEW": SECRET_NEW, "STRIPE_OLD": SECRET_OLD}
TOML = """
[sources.stripe]
scheme = "stripe"
secrets = ["env:STRIPE_NEW", "env:STRIPE_OLD"]
tolerance_seconds = 300
"""
BODY = payload("stripe-payment-intent-succeeded")
NOW = 1_795_431_800


def header(body: bytes = BODY, secret: str = SECRET_NEW, timestamp: int = NOW) -> str:
    return WebhookSignature.generate_signature_header(body.decode(), secret, timestamp=timestamp)


def signed(body: bytes = BODY, **kw: object) -> dict[str, str]:
    return {"Content-Type": "application/json; charset=utf-8", "Stripe-Signature": header(body, **kw)}  # type: ignore[arg-type]


async def test_accepted_with_event_id_and_account(provider_client, db) -> None:
    client = await provider_client(TOML, ENV, clock=FakeClock(NOW))
    resp = await client.post(URL, data=BODY, headers=signed())
    assert resp.status == 201, await resp.text()
    row = (await stored(db))[0]
    doc = orjson.loads(BODY)
    assert (row["tenant_id"], row["idempotency_key"]) == (doc["account"], doc["id"])
    assert bytes(row["body"]) == BODY


async def test_our_accepted_header_is_one_stripe_verifies(provider_client, db) -> None:
    value = header()
    WebhookSignature.verify_header(BODY.decode(), value, SECRET_NEW, tolerance=None)
    client = await provider_client(TOML, ENV, clock=FakeClock(NOW))
    assert (await client.post(URL, data=BODY, headers={"Content-Type": "application/json", "Stripe-Signature": value})).status == 201


async def test_a_retry_re_signed_with_a_new_timestamp_is_a_duplicate(provider_client, db) -> None:
    clock = FakeClock(NOW)
    client = await provider_client(TOML, ENV, clock=clock)
    first = await client.post(URL, data=BODY, headers=signed())
    assert first.status == 201
    clock.now = NOW + 3600
    retry = await client.post(URL, data=BODY, headers=signed(timestamp=NOW + 3590))
    assert retry.status == 200
    assert (await retry.json())["event_id"] == (await first.json())["event_id"]
    assert len(await stored(db)) == 1


async def test_any_v1_matching_passes(provider_client, db) -> None:
    client = await provider_client(TOML, ENV, clock=FakeClock(NOW))
    good = header().split(",")[1]
    wrong = header(secret="whsec_someone_else").split(",")[1]
    value = f"t={NOW},{wrong},v0={'a' * 64},{good}"
    assert (await client.post(URL, data=BODY, headers={"Content-Type": "application/json", "Stripe-Signature": value})).status == 201


async def test_rotation_both_secrets_verify_and_a_removed_one_does_not(provider_client, db) -> None:
    client = await provider_client(TOML, ENV, clock=FakeClock(NOW))
    assert (await client.post(URL, data=BODY, headers=signed(secret=SECRET_OLD))).status == 201
    other = BODY.replace(b"evt_3RbT9x", b"evt_4RbT9x")
    assert (await client.post(URL, data=other, headers=signed(other, secret=SECRET_NEW))).status == 201
    rotated = await provider_client(TOML.replace(', "env:STRIPE_OLD"', ""), ENV, clock=FakeClock(NOW))
    third = BODY.replace(b"evt_3RbT9x", b"evt_5RbT9x")
    await assert_error(await rotated.post(URL, data=third, headers=signed(third, secret=SECRET_OLD)), 401, "invalid_signature")
    assert len(await stored(db)) == 2


@pytest.mark.parametrize(
    "offset, status",
    [(0, 201), (300, 201), (301, 401), (-300, 201), (-301, 401), (-86400, 401), (86400, 401)],
    ids=["now", "stale-boundary", "stale", "future-boundary", "future", "day-old", "day-ahead"],
)
async def test_replay_window_is_exact(provider_client, db, offset: int, status: int) -> None:
    # The clock is `offset` seconds after the signed t (negative: t is in the future).
    client = await provider_client(TOML, ENV, clock=FakeClock(NOW + offset))
    resp = await client.post(URL, data=BODY, headers=signed())
    assert resp.status == status, await resp.text()
    assert len(await stored(db)) == (1 if status == 201 else 0)


async def test_tolerance_is_per_source(provider_client, db) -> None:
    client = await provider_client(TOML.replace("300", "10"), ENV, clock=FakeClock(NOW + 11))
    await assert_error(await client.post(URL, data=BODY, headers=signed()), 401, "invalid_signature")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        f"v1={'a' * 64}",                               # no t
        f"t={NOW}",                                      # no v1
        f"t=,v1={'a' * 64}",
        f"t=soon,v1={'a' * 64}",
        f"t={NOW},t={NOW},v1={'a' * 64}",              # two t
        f"t={NOW},v1=xyz",                               # v1 not hex
        f"t={NOW},v1={'g' * 64}",
        f"t={NOW},v1={'a' * 64}",                        # well-formed, wrong
        f"t={NOW};v1={'a' * 64}",
        f"t={NOW},v1=caf\u00e9",
        f"t={'9' * 40},v1={'a' * 64}",
    ],
)
async def test_malformed_or_wrong_header_is_401(provider_client, db, value: str) -> None:
    client = await provider_client(TOML, ENV, clock=FakeClock(NOW))
    resp = await client.post(URL, data=BODY, headers={"Content-Type": "application/json", "Stripe-Signature": value})
    await assert_error(resp, 401, "invalid_signature")
    assert await stored(db) == []


async def test_missing_header_is_401(provider_client, db) -> None:
    client = await provider_client(TOML, ENV, clock=FakeClock(NOW))
    await assert_error(await client.post(URL, data=BODY, headers={"Content-Type": "application/json"}), 401, "invalid_signature")


async def test_event_without_account_needs_a_tenant(provider_client, db) -> None:
    doc = orjson.loads(BODY)
    del doc["account"]
    body = orjson.dumps(doc)
    client = await provider_client(TOML, ENV, clock=FakeClock(NOW))
    await assert_error(await client.post(URL, data=body, headers=signed(body)), 400, "invalid_tenant")
    assert (await client.post(URL + "?tenant=shop-9", data=body, headers=signed(body))).status == 201
    assert (await stored(db))[0]["tenant_id"] == "shop-9"


async def test_outcomes_are_counted_per_source(provider_client, db) -> None:
    client = await provider_client(TOML, ENV, clock=FakeClock(NOW))
    await client.post(URL, data=BODY, headers=signed())                                   # accepted
    await client.post(URL, data=BODY, headers=signed())                                   # duplicate
    await client.post(URL, data=BODY, headers={"Content-Type": "application/json", "Stripe-Signature": "t=1"})                # rejected_signature
    await client.post(URL, data=b"[]", headers=signed(b"[]"))                             # rejected_input
    assert await events_total(client, "stripe") == {
        "accepted": 1.0, "duplicate": 1.0, "rejected_signature": 1.0, "rejected_input": 1.0}
