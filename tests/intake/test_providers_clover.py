"""scheme = "clover": X-Clover-Auth, one event per change, the verification handshake."""

from __future__ import annotations

import logging

import orjson
import pytest

from tests.db_faults import sqlstate_fault
from tests.helpers import assert_error, stored
from tests.provider_helpers import events_total, payload

# The write path: batched and direct writes must each keep these promises.
pytestmark = pytest.mark.both_write_paths

URL = "/pos/clover/ingest"
TOML = """
[sources.clover]
scheme = "clover"
secrets = ["env:CLOVER_AUTH", "clover-auth-old-7e1b"]
"""
ENV = {"CLOVER_AUTH": "clover-auth-new-0c5d"}
BODY = payload("clover-multi-merchant")
DOC = orjson.loads(BODY)
CHANGES = [(mid, change) for mid, changes in DOC["merchants"].items() for change in changes]


def headers(auth: str | None = "clover-auth-new-0c5d") -> dict[str, str]:
    out = {"Content-Type": "application/json"}
    if auth is not None:
        out["X-Clover-Auth"] = auth
    return out


def key_of(mid: str, change: dict) -> str:
    return f"{mid}|{change['objectId']}|{change['type']}|{change['ts']}"


def one_change(mid: str, change: dict) -> bytes:
    return orjson.dumps({"appId": DOC["appId"], "merchants": {mid: [change]}})


async def test_one_event_per_change_each_with_its_merchant_as_tenant(provider_client, db) -> None:
    client = await provider_client(TOML, ENV)
    resp = await client.post(URL, data=BODY, headers=headers())
    assert resp.status == 201, await resp.text()
    doc = await resp.json()
    assert doc["status"] == "accepted"
    assert [e["status"] for e in doc["events"]] == ["accepted"] * len(CHANGES)
    rows = await stored(db)
    assert len(rows) == len(CHANGES) == 4
    # (Batched writes may store them in key order, not request order.)
    assert sorted((r["tenant_id"], r["idempotency_key"], bytes(r["body"])) for r in rows) == sorted(
        # Each stored body is that change alone, in Clover's shape.
        (mid, key_of(mid, c), one_change(mid, c)) for mid, c in CHANGES
    )
    assert [e["idempotency_key"] for e in doc["events"]] == [key_of(mid, c) for mid, c in CHANGES]
    assert sorted(e["event_id"] for e in doc["events"]) == [r["id"] for r in rows]


async def test_the_same_notification_again_is_all_duplicates(provider_client, db) -> None:
    client = await provider_client(TOML, ENV)
    first = await (await client.post(URL, data=BODY, headers=headers())).json()
    again = await client.post(URL, data=BODY, headers=headers())
    assert again.status == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    doc = await again.json()
    assert doc["status"] == "duplicate"
    assert [e["status"] for e in doc["events"]] == ["duplicate"] * 4
    assert [e["event_id"] for e in doc["events"]] == [e["event_id"] for e in first["events"]]
    assert len(await stored(db)) == 4


async def test_changes_regrouped_on_a_retry_dedup_each_on_its_own(provider_client, db) -> None:
    client = await provider_client(TOML, ENV)
    mid, change = CHANGES[0]
    single = orjson.dumps({"appId": DOC["appId"], "merchants": {mid: [change]}})
    assert (await client.post(URL, data=single, headers=headers())).status == 201
    resp = await client.post(URL, data=BODY, headers=headers())
    assert resp.status == 201
    assert [e["status"] for e in (await resp.json())["events"]] == ["duplicate", "accepted", "accepted", "accepted"]
    assert len(await stored(db)) == 4


async def test_events_are_counted_per_change(provider_client, db) -> None:
    client = await provider_client(TOML, ENV)
    await client.post(URL, data=BODY, headers=headers())
    await client.post(URL, data=BODY, headers=headers())
    await client.post(URL, data=BODY, headers=headers("wrong"))
    assert await events_total(client, "clover") == {"accepted": 4.0, "duplicate": 4.0, "rejected_signature": 1.0}


async def test_verification_handshake_is_answered_logged_and_not_stored(provider_client, db, caplog) -> None:
    client = await provider_client(TOML, ENV)
    with caplog.at_level(logging.INFO, logger="codex_ingest.providers"):
        resp = await client.post(URL, data=b'{"verificationCode": "5c3b2a1d-9e8f"}', headers=headers(None))
    assert resp.status == 200
    assert (await resp.json())["status"] == "verification_received"
    assert await stored(db) == []
    record = next(r for r in caplog.records if "handshake" in r.getMessage())
    assert record.verification_code == "5c3b2a1d-9e8f"  # type: ignore[attr-defined]
    assert record.source == "clover"  # type: ignore[attr-defined]
    assert "clover-auth" not in caplog.text


@pytest.mark.parametrize("auth", [None, "", "wrong", "clover-auth-new-0c5d-and-more", "caf\u00e9"])
async def test_missing_or_wrong_auth_is_401_and_nothing_stored(provider_client, db, auth: str | None) -> None:
    client = await provider_client(TOML, ENV)
    await assert_error(await client.post(URL, data=BODY, headers=headers(auth)), 401, "invalid_signature")
    assert await stored(db) == []


async def test_rotation_both_codes_accepted_and_a_removed_one_rejected(provider_client, db) -> None:
    client = await provider_client(TOML, ENV)
    assert (await client.post(URL, data=BODY, headers=headers("clover-auth-old-7e1b"))).status == 201
    rotated = await provider_client(TOML.replace(', "clover-auth-old-7e1b"', ""), ENV)
    await assert_error(await rotated.post(URL, data=BODY, headers=headers("clover-auth-old-7e1b")), 401, "invalid_signature")
    assert (await rotated.post(URL, data=BODY, headers=headers())).status == 200


async def test_a_handshake_shape_with_extra_keys_is_not_a_handshake(provider_client, db) -> None:
    client = await provider_client(TOML, ENV)
    body = b'{"verificationCode": "x", "merchants": {}}'
    await assert_error(await client.post(URL, data=body, headers=headers(None)), 401, "invalid_signature")


@pytest.mark.parametrize(
    "body",
    [
        b'{"appId":"A"}',
        b'{"appId":"A","merchants":[]}',
        b'{"appId":"A","merchants":{"M1":{}}}',
        b'{"appId":"A","merchants":{"M1":[{"objectId":"O:1","type":"CREATE"}]}}',
        b'{"appId":"A","merchants":{"M1":[{"objectId":"O:1","type":"CREATE","ts":"1"}]}}',
        b'{"appId":"A","merchants":{"M1":[]}}',
        b"[]",
    ],
)
async def test_malformed_notifications_are_400_and_nothing_stored(provider_client, db, body: bytes) -> None:
    client = await provider_client(TOML, ENV)
    resp = await client.post(URL, data=body, headers=headers())
    assert resp.status == 400, await resp.text()
    assert await stored(db) == []


async def test_tenant_override_applies_to_every_change(provider_client, db) -> None:
    client = await provider_client(TOML, ENV)
    assert (await client.post(URL + "?tenant=franchise-1", data=BODY, headers=headers())).status == 201
    rows = await stored(db)
    assert {r["tenant_id"] for r in rows} == {"franchise-1"}
    assert len({r["idempotency_key"] for r in rows}) == 4  # the merchant stays in each key


async def test_a_change_the_database_cannot_take_fails_the_request_with_503_and_the_retry_dedups(provider_client, db) -> None:
    failing_mid, failing = CHANGES[2]
    # A real failure from the real database for one change (SQLSTATE 53000,
    # insufficient resources: transient, so 503), not a mock.
    async with sqlstate_fault(db, "53000", key=key_of(failing_mid, failing)):
        client = await provider_client(TOML, ENV)
        resp = await client.post(URL, data=BODY, headers=headers())
        await assert_error(resp, 503, "database_unavailable")
        assert "Retry-After" in resp.headers
        assert key_of(failing_mid, failing) not in {r["idempotency_key"] for r in await stored(db)}
    retry = await client.post(URL, data=BODY, headers=headers())
    assert retry.status == 201
    statuses = {e["idempotency_key"]: e["status"] for e in (await retry.json())["events"]}
    assert statuses[key_of(failing_mid, failing)] == "accepted"
    assert len(await stored(db)) == 4
    counted = await events_total(client, "clover")
    assert counted["unavailable"] >= 1 and counted["accepted"] == 4


async def test_a_change_stored_before_with_another_body_makes_the_request_422_and_the_others_are_stored(provider_client, db) -> None:
    client = await provider_client(TOML, ENV)
    mid, change = CHANGES[1]
    # Same merchant, objectId, type and ts (so the same key), another body.
    before = orjson.dumps({"appId": DOC["appId"], "merchants": {mid: [{**change, "note": "sent before"}]}})
    first = await client.post(URL, data=before, headers=headers())
    assert first.status == 201, await first.text()

    resp = await client.post(URL, data=BODY, headers=headers())
    doc = await assert_error(resp, 422, "idempotency_key_reused")
    assert "1 of this notification's 4 changes" in doc["detail"]
    rows = {r["idempotency_key"]: bytes(r["body"]) for r in await stored(db)}
    # The one stored before is kept as it was; every other change is stored now.
    assert rows == {key_of(m, c): (before if (m, c) == (mid, change) else one_change(m, c)) for m, c in CHANGES}
    assert await events_total(client, "clover") == {"accepted": 4.0, "conflict": 1.0}

    # Clover's retry of the same notification: still 422, nothing replaced, nothing doubled.
    again = await client.post(URL, data=BODY, headers=headers())
    await assert_error(again, 422, "idempotency_key_reused")
    assert {r["idempotency_key"]: bytes(r["body"]) for r in await stored(db)} == rows


@pytest.mark.parametrize("order", ["400-first", "503-first"])
async def test_a_503_wins_over_a_400_in_one_notification_so_clover_retries(provider_client, db, settings, order: str) -> None:
    # One change the database refuses for its own values (class 22: 400 on
    # its own), one it cannot take now (class 53: 503). The request is one
    # answer: the 503, whichever comes first, or Clover would stop retrying
    # a change it should resend. Raised by the real database, from a trigger.
    (bad_mid, bad), (busy_mid, busy) = (CHANGES[0], CHANGES[2]) if order == "400-first" else (CHANGES[2], CHANGES[0])
    await db.execute(f"""
        CREATE FUNCTION fail_two_changes() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.idempotency_key = '{key_of(bad_mid, bad)}' THEN
                RAISE EXCEPTION 'bad value (test)' USING ERRCODE = '22023';
            END IF;
            IF NEW.idempotency_key = '{key_of(busy_mid, busy)}' THEN
                RAISE EXCEPTION 'disk full (test)' USING ERRCODE = '53100';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER fail_two_changes BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION fail_two_changes();
    """)
    try:
        client = await provider_client(TOML, ENV)
        resp = await client.post(URL, data=BODY, headers=headers())
        await assert_error(resp, 503, "database_unavailable")
        assert resp.headers["Retry-After"] == "5"
        keys = {r["idempotency_key"] for r in await stored(db)}
        assert not keys & {key_of(bad_mid, bad), key_of(busy_mid, busy)}
        if not settings.batching:
            # Stored one by one: each change's outcome is its own, the others are stored.
            assert keys == {key_of(m, c) for m, c in CHANGES} - {key_of(bad_mid, bad), key_of(busy_mid, busy)}
            assert await events_total(client, "clover") == {"accepted": 2.0, "rejected_input": 1.0, "unavailable": 1.0}
    finally:
        await db.execute("DROP TRIGGER fail_two_changes ON events; DROP FUNCTION fail_two_changes();")
    retry = await client.post(URL, data=BODY, headers=headers())
    assert retry.status == 201, await retry.text()
    assert len(await stored(db)) == 4
