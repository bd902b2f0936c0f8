"""POST /pos/{source}/ingest: the contract, line by line, against real PostgreSQL."""

from __future__ import annotations

import hashlib

import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.helpers import PROVIDER_PAYLOADS, assert_error, headers, payload, sign, stored

URL = "/pos/square/ingest"
BODY = b'{"type":"payment.updated","amount":2450}'


# --- accepted, duplicate, conflict -------------------------------------------------


@pytest.mark.both_write_paths
async def test_new_event_is_201_and_stored_byte_for_byte(client: TestClient, db) -> None:
    resp = await client.post(URL, data=BODY, headers=headers(BODY))
    assert resp.status == 201
    doc = await resp.json()
    assert doc["status"] == "accepted"
    rows = await stored(db)
    assert len(rows) == 1
    row = rows[0]
    assert doc["event_id"] == row["id"]
    assert bytes(row["body"]) == BODY
    assert bytes(row["body_sha256"]) == hashlib.sha256(BODY).digest()
    assert (row["tenant_id"], row["source"]) == ("tenant-1", "square")
    assert row["received_at"] is not None


@pytest.mark.both_write_paths
async def test_same_key_same_body_is_200_duplicate_with_original_id(client: TestClient, db) -> None:
    first = await client.post(URL, data=BODY, headers=headers(BODY))
    original = (await first.json())["event_id"]
    again = await client.post(URL, data=BODY, headers=headers(BODY))
    assert again.status == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    doc = await again.json()
    assert doc["status"] == "duplicate"
    assert doc["event_id"] == original
    row = (await stored(db))[0]
    assert doc["received_at"] == row["received_at"].isoformat()
    assert len(await stored(db)) == 1
    assert "Idempotent-Replayed" not in first.headers


@pytest.mark.both_write_paths
async def test_same_key_different_body_is_422_and_nothing_replaced(client: TestClient, db) -> None:
    other = b'{"type":"payment.updated","amount":9999}'
    first = await client.post(URL, data=BODY, headers=headers(BODY, **{"Idempotency-Key": "k-1"}))
    assert first.status == 201
    resp = await client.post(URL, data=other, headers=headers(other, **{"Idempotency-Key": "k-1"}))
    await assert_error(resp, 422, "idempotency_key_reused")
    rows = await stored(db)
    assert len(rows) == 1 and bytes(rows[0]["body"]) == BODY


@pytest.mark.both_write_paths
async def test_idempotency_key_header_is_the_key(client: TestClient, db) -> None:
    resp = await client.post(URL, data=BODY, headers=headers(BODY, **{"Idempotency-Key": "evt 42/a"}))
    assert resp.status == 201
    assert (await stored(db))[0]["idempotency_key"] == "evt 42/a"


@pytest.mark.both_write_paths
async def test_without_idempotency_key_the_key_is_the_body_sha256(client: TestClient, db) -> None:
    await client.post(URL, data=BODY, headers=headers(BODY))
    assert (await stored(db))[0]["idempotency_key"] == hashlib.sha256(BODY).hexdigest()


@pytest.mark.both_write_paths
async def test_key_scope_is_tenant_and_source(client: TestClient, db) -> None:
    h = {"Idempotency-Key": "same"}
    answers = [
        await client.post("/pos/square/ingest", data=BODY, headers=headers(BODY, tenant="a", **h)),
        await client.post("/pos/square/ingest", data=BODY, headers=headers(BODY, tenant="b", **h)),
        await client.post("/pos/toast/ingest", data=BODY, headers=headers(BODY, tenant="a", **h)),
    ]
    assert [r.status for r in answers] == [201, 201, 201]
    assert len({(await r.json())["event_id"] for r in answers}) == 3
    assert len(await stored(db)) == 3


@pytest.mark.both_write_paths
@pytest.mark.parametrize("name", PROVIDER_PAYLOADS)
async def test_provider_shaped_payloads_are_stored_exactly(client: TestClient, db, name: str) -> None:
    body = payload(name)
    assert len(body) > 400
    resp = await client.post(f"/pos/{name.split('-')[0]}/ingest", data=body, headers=headers(body))
    assert resp.status == 201
    assert bytes((await stored(db))[0]["body"]) == body


@pytest.mark.both_write_paths
async def test_nul_escape_is_valid_json_and_stored(client: TestClient, db) -> None:
    body = b'{"note":"before\\u0000after","k":"\\u0000"}'
    resp = await client.post(URL, data=body, headers=headers(body))
    assert resp.status == 201
    assert bytes((await stored(db))[0]["body"]) == body


async def test_json_array_body_is_accepted(client: TestClient, db) -> None:
    body = b'[{"id":1},{"id":2}]'
    resp = await client.post(URL, data=body, headers=headers(body))
    assert resp.status == 201


async def test_unusual_whitespace_and_key_order_are_kept(client: TestClient, db) -> None:
    body = b'{ "z" : 1,\n\t"a" : [ 1.50 , 2e3 ] }'
    await client.post(URL, data=body, headers=headers(body))
    assert bytes((await stored(db))[0]["body"]) == body


# --- source and tenant -------------------------------------------------------------


@pytest.mark.parametrize(
    "source", ["Square", "-square", "_x", "a" * 65, "sq.uare", "sq%20uare", "caf%C3%A9", "a%2Fb"]
)
async def test_invalid_source_is_400(client: TestClient, db, source: str) -> None:
    resp = await client.post(f"/pos/{source}/ingest", data=BODY, headers=headers(BODY))
    await assert_error(resp, 400, "invalid_source")
    assert await stored(db) == []


@pytest.mark.parametrize("source", ["a", "a" * 64, "clover-eu_2", "0pos"])
async def test_valid_sources(client: TestClient, db, source: str) -> None:
    resp = await client.post(f"/pos/{source}/ingest", data=BODY, headers=headers(BODY))
    assert resp.status == 201


@pytest.mark.parametrize("path", ["/pos/../x/ingest", "/pos/%2e%2e/ingest"])
async def test_path_traversal_is_a_4xx_and_stores_nothing(client: TestClient, db, path: str) -> None:
    resp = await client.post(path, data=BODY, headers=headers(BODY))
    assert resp.status in (400, 404)
    assert await stored(db) == []


async def test_missing_tenant_is_400(client: TestClient, db) -> None:
    resp = await client.post(URL, data=BODY, headers=headers(BODY, tenant=None))
    await assert_error(resp, 400, "invalid_tenant")
    assert await stored(db) == []


@pytest.mark.parametrize("tenant", ["-lead", "has space", "t" * 129, "t/enant", "caf\u00e9", ""])
async def test_invalid_tenant_is_400(client: TestClient, db, tenant: str) -> None:
    resp = await client.post(
        URL, params={"tenant": tenant}, data=BODY, headers=headers(BODY, tenant=None)
    )
    await assert_error(resp, 400, "invalid_tenant")
    assert await stored(db) == []


async def test_tenant_from_query_parameter(client: TestClient, db) -> None:
    resp = await client.post(URL, params={"tenant": "shop.42:eu"}, data=BODY, headers=headers(BODY, tenant=None))
    assert resp.status == 201
    assert (await stored(db))[0]["tenant_id"] == "shop.42:eu"


async def test_tenant_header_wins_over_query(client: TestClient, db) -> None:
    resp = await client.post(URL, params={"tenant": "from-query"}, data=BODY, headers=headers(BODY, tenant="from-header"))
    assert resp.status == 201
    assert (await stored(db))[0]["tenant_id"] == "from-header"


async def test_tenant_of_128_characters_is_accepted(client: TestClient, db) -> None:
    resp = await client.post(URL, data=BODY, headers=headers(BODY, tenant="T" * 128))
    assert resp.status == 201


# --- signature ---------------------------------------------------------------------


async def test_missing_signature_is_401(client: TestClient, db) -> None:
    h = headers(BODY)
    del h["X-Signature"]
    resp = await client.post(URL, data=BODY, headers=h)
    await assert_error(resp, 401, "invalid_signature")
    assert await stored(db) == []


@pytest.mark.parametrize(
    "signature",
    [
        sign(b"another body"),
        sign(BODY, secret="wrong-secret"),
        "sha256=",
        "sha256=zz" + "0" * 62,
        "sha1=" + "0" * 40,
        sign(BODY)[:-1],
        sign(BODY) + "0",
        "sha256=" + " ".join([sign(BODY)[7:][:32], sign(BODY)[7:][32:]]),
    ],
)
async def test_wrong_or_malformed_signature_is_401(client: TestClient, db, signature: str) -> None:
    resp = await client.post(URL, data=BODY, headers=headers(BODY, **{"X-Signature": signature}))
    await assert_error(resp, 401, "invalid_signature")
    assert await stored(db) == []


async def test_bare_hex_and_uppercase_signatures_are_accepted(client: TestClient, db) -> None:
    bare = sign(BODY)[len("sha256="):]
    one = await client.post(URL, data=BODY, headers=headers(BODY, **{"X-Signature": bare}))
    assert one.status == 201
    two = await client.post(URL, data=BODY, headers=headers(BODY, **{"X-Signature": "sha256=" + bare.upper()}))
    assert two.status == 200


async def test_x_webhook_signature_alias_is_accepted(client: TestClient, db) -> None:
    h = headers(BODY)
    h["X-Webhook-Signature"] = h.pop("X-Signature")
    resp = await client.post(URL, data=BODY, headers=h)
    assert resp.status == 201


async def test_signature_is_checked_before_the_body_is_parsed(client: TestClient, db) -> None:
    # Malformed JSON with a bad signature is 401, not 400: the body is not
    # looked at until it is authenticated.
    body = b"{not json"
    resp = await client.post(URL, data=body, headers=headers(body, **{"X-Signature": sign(b"x")}))
    await assert_error(resp, 401, "invalid_signature")


# --- body --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"a":1',
        b"",
        b'"just a string"',
        b"42",
        b"null",
        b'{"a":1} trailing',
        b'{"bad":"\xff\xfe"}',
        b'{"lone":"\xed\xa0\x80"}',
        b"\xef\xbb\xbf{}",
    ],
)
async def test_invalid_json_is_400(client: TestClient, db, body: bytes) -> None:
    resp = await client.post(URL, data=body, headers=headers(body))
    await assert_error(resp, 400, "invalid_json")
    assert await stored(db) == []


async def test_nesting_beyond_the_parser_limit_is_400(client: TestClient, db) -> None:
    body = b"[" * 5000 + b"]" * 5000
    resp = await client.post(URL, data=body, headers=headers(body))
    doc = await assert_error(resp, 400, "invalid_json")
    assert "recursion" in doc["detail"] or "depth" in doc["detail"]
    assert await stored(db) == []


async def test_body_over_max_body_bytes_is_413(make_client, db) -> None:
    client = await make_client(max_body_bytes=1000)
    ok = b'{"p":"' + b"x" * (1000 - 8) + b'"}'
    assert len(ok) == 1000
    assert (await client.post(URL, data=ok, headers=headers(ok))).status == 201
    big = b'{"p":"' + b"x" * (1000 - 7) + b'"}'
    resp = await client.post(URL, data=big, headers=headers(big))
    await assert_error(resp, 413, "payload_too_large")
    assert len(await stored(db)) == 1


async def test_chunked_body_over_the_limit_is_413(make_client, db) -> None:
    client = await make_client(max_body_bytes=1000)
    big = b'{"p":"' + b"x" * 5000 + b'"}'

    async def chunks():
        for i in range(0, len(big), 512):
            yield big[i : i + 512]

    resp = await client.post(URL, data=chunks(), headers=headers(big))
    await assert_error(resp, 413, "payload_too_large")
    assert await stored(db) == []


async def test_chunked_body_within_the_limit_is_accepted(client: TestClient, db) -> None:
    async def chunks():
        yield BODY[:10]
        yield BODY[10:]

    resp = await client.post(URL, data=chunks(), headers=headers(BODY))
    assert resp.status == 201
    assert bytes((await stored(db))[0]["body"]) == BODY


async def test_a_chunked_body_of_exactly_the_limit_is_accepted_and_one_byte_more_is_413(make_client, db) -> None:
    # A chunked body announces no size: the limit is counted as it streams, to the byte.
    client = await make_client(max_body_bytes=1000)

    async def chunks(body: bytes):
        for i in range(0, len(body), 300):
            yield body[i : i + 300]

    exact = b'{"p":"' + b"x" * (1000 - 8) + b'"}'
    over = b'{"p":"' + b"x" * (1000 - 7) + b'"}'
    assert (len(exact), len(over)) == (1000, 1001)
    resp = await client.post(URL, data=chunks(exact), headers=headers(exact))
    assert resp.status == 201, await resp.text()
    await assert_error(await client.post(URL, data=chunks(over), headers=headers(over)), 413, "payload_too_large")
    assert [bytes(r["body"]) for r in await stored(db)] == [exact]


async def test_a_batch_of_exactly_batch_max_items_is_accepted_and_one_more_is_413(make_client, db) -> None:
    # The batch route's own limit, at its boundary (tests/web/test_batch_ingest.py has the rest).
    client = await make_client(batch_max_items=3)
    batch_url = "/pos/pos-terminal/ingest/batch"
    three = orjson.dumps([{"event_id": str(n)} for n in range(3)])
    four = orjson.dumps([{"event_id": str(n)} for n in range(4)])
    resp = await client.post(batch_url, data=three, headers=headers(three))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["counts"]["accepted"] == 3
    await assert_error(await client.post(batch_url, data=four, headers=headers(four)), 413, "too_many_items")
    assert len(await stored(db)) == 3


async def test_non_json_content_type_is_415(client: TestClient, db) -> None:
    resp = await client.post(URL, data=BODY, headers=headers(BODY, **{"Content-Type": "text/plain"}))
    await assert_error(resp, 415, "unsupported_media_type")
    assert await stored(db) == []


@pytest.mark.parametrize("ctype", ["application/json; charset=utf-8", "application/vnd.pos+json"])
async def test_json_content_types_are_accepted(client: TestClient, db, ctype: str) -> None:
    resp = await client.post(URL, data=BODY, headers=headers(BODY, **{"Content-Type": ctype}))
    assert resp.status == 201
    assert (await stored(db))[0]["content_type"] == ctype


async def test_missing_content_type_is_taken_as_json(client: TestClient, db) -> None:
    h = headers(BODY)
    del h["Content-Type"]
    resp = await client.post(URL, data=BODY, headers=h, skip_auto_headers=["Content-Type"])
    assert resp.status == 201


# --- idempotency key ---------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "k" * 256, "caf\u00e9", "tab\there"])
async def test_invalid_idempotency_key_is_400(client: TestClient, db, key: str) -> None:
    resp = await client.post(URL, data=BODY, headers=headers(BODY, **{"Idempotency-Key": key}))
    await assert_error(resp, 400, "invalid_idempotency_key")
    assert await stored(db) == []


async def test_idempotency_key_of_255_printable_characters_is_accepted(client: TestClient, db) -> None:
    key = "".join(chr(c) for c in range(0x21, 0x7F)) * 3
    key = key[:255]
    resp = await client.post(URL, data=BODY, headers=headers(BODY, **{"Idempotency-Key": key}))
    assert resp.status == 201
    assert (await stored(db))[0]["idempotency_key"] == key


# --- methods, request ids ----------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_other_methods_are_405(client: TestClient, db, method: str) -> None:
    resp = await client.request(method, URL, data=BODY, headers=headers(BODY))
    await assert_error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]
    assert await stored(db) == []


async def test_every_response_carries_a_request_id(client: TestClient, db) -> None:
    answers = [
        await client.post(URL, data=BODY, headers=headers(BODY)),
        await client.post(URL, data=BODY, headers=headers(BODY, **{"X-Signature": "nope"})),
        await client.get("/nowhere"),
        await client.get(URL),
        await client.get("/healthz"),
    ]
    ids = [r.headers.get("X-Request-Id") for r in answers]
    assert all(ids) and len(set(ids)) == len(ids)


async def test_a_callers_request_id_is_echoed_and_a_hostile_one_replaced(client: TestClient, db) -> None:
    mine = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert mine.headers["X-Request-Id"] == "abc-123"
    hostile = await client.get("/healthz", headers={"X-Request-Id": "x" * 500})
    assert hostile.headers["X-Request-Id"] != "x" * 500


async def test_unknown_path_is_json_404(client: TestClient, db) -> None:
    await assert_error(await client.get("/nowhere"), 404, "not_found")


async def test_error_bodies_are_json_objects(client: TestClient, db) -> None:
    resp = await client.post(URL, data=BODY, headers=headers(BODY, tenant=None))
    assert set(orjson.loads(await resp.read())) == {"error", "detail"}
