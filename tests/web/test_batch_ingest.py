"""POST /pos/{source}/ingest/batch: per-item outcomes, NDJSON, conflicts,
invalid items, limits, provider sources, and a 503 whose retry settles."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from tests.db_faults import sqlstate_fault
from tests.helpers import headers, stored

URL = "/pos/pos-terminal/ingest/batch"


def post(client, body: bytes, *, content_type: str = "application/json", **extra: str):
    return client.post(URL, data=body, headers={**headers(body, **extra), "Content-Type": content_type})


async def test_each_item_is_deduplicated_on_its_own_key_and_answered_in_order(client, db) -> None:
    items = [
        {"event_id": "sale-1", "total": 10},
        {"id": 42, "total": 11},                 # an integer id is the key, as text
        {"id": "refund-7", "total": -3},
        {"total": 12},                           # no id: the SHA-256 of its bytes
        {"event_id": "sale-1", "total": 10},     # the same event again, in the same batch
        "not an object",
        {"event_id": "\u00e9t\u00e9", "total": 1},  # not printable ASCII: no usable key
    ]
    resp = await post(client, orjson.dumps(items))
    assert resp.status == 200, await resp.text()
    doc = await resp.json()
    assert [r["status"] for r in doc["results"]] == ["accepted", "accepted", "accepted", "accepted", "duplicate", "invalid", "invalid"]
    assert doc["results"][4]["event_id"] == doc["results"][0]["event_id"]
    assert [r["error"] for r in doc["results"][5:]] == ["invalid_json", "invalid_idempotency_key"]
    assert doc["counts"] == {"accepted": 4, "duplicate": 1, "conflict": 0, "invalid": 2}
    rows = await stored(db)
    assert sorted(r["idempotency_key"] for r in rows) == sorted(
        ["sale-1", "42", "refund-7", hashlib.sha256(b'{"total":12}').hexdigest()])
    # Array items are stored as compact JSON, the content type of one event.
    by_key = {r["idempotency_key"]: r for r in rows}
    assert bytes(by_key["42"]["body"]) == b'{"id":42,"total":11}'
    assert by_key["42"]["content_type"] == "application/json"
    assert {r["tenant_id"] for r in rows} == {"tenant-1"} and {r["source"] for r in rows} == {"pos-terminal"}


async def test_the_same_batch_again_is_all_duplicates_and_a_changed_item_a_conflict(client, db) -> None:
    body = orjson.dumps([{"event_id": f"e-{n}", "n": n} for n in range(5)])
    first = await (await post(client, body)).json()
    again = await (await post(client, body)).json()
    assert again["counts"] == {"accepted": 0, "duplicate": 5, "conflict": 0, "invalid": 0}
    assert [r["event_id"] for r in again["results"]] == [r["event_id"] for r in first["results"]]
    changed = await (await post(client, orjson.dumps([{"event_id": "e-0", "n": 99}, {"event_id": "e-9", "n": 9}]))).json()
    assert [(r["status"], r["error"]) for r in changed["results"]] == [("conflict", "idempotency_key_reused"), ("accepted", None)]
    assert len(await stored(db)) == 6


async def test_ndjson_lines_are_stored_exactly_and_a_bad_line_fails_alone(client, db) -> None:
    lines = [b'{"event_id":"a", "spaced" : true}', b"{not json}", b'{"event_id":"b","x":[1, 2]}', b""]
    resp = await post(client, b"\n".join(lines), content_type="application/x-ndjson")
    doc = await resp.json()
    assert [r["status"] for r in doc["results"]] == ["accepted", "invalid", "accepted"]
    assert {r["idempotency_key"]: bytes(r["body"]) for r in await stored(db)} == {"a": lines[0], "b": lines[2]}


@pytest.mark.parametrize(("body", "content_type", "status", "error"), [
    (b"[]", "application/json", 400, "empty_batch"),
    (b"\n\n", "application/x-ndjson", 400, "empty_batch"),
    (b'{"event_id":"x"}', "application/json", 400, "invalid_json"),
    (b"[1, 2", "application/json", 400, "invalid_json"),
    (b"[]", "text/plain", 415, "unsupported_media_type"),
])
async def test_request_level_problems_are_the_usual_4xx_and_store_nothing(client, db, body, content_type, status, error) -> None:
    resp = await post(client, body, content_type=content_type)
    assert resp.status == status, await resp.text()
    assert (await resp.json())["error"] == error
    assert await stored(db) == []


async def test_a_wrong_signature_or_no_tenant_is_refused_for_the_whole_batch(client, db) -> None:
    body = orjson.dumps([{"event_id": "x"}])
    wrong = await client.post(URL, data=body, headers={**headers(body), "X-Signature": "sha256=" + "0" * 64})
    assert wrong.status == 401
    no_tenant = await client.post(URL, data=body, headers=headers(body, tenant=None))
    assert no_tenant.status == 400 and (await no_tenant.json())["error"] == "invalid_tenant"
    assert await stored(db) == []


async def test_more_items_or_bytes_than_the_limits_is_413(make_client, db) -> None:
    client = await make_client(batch_max_items=3, max_batch_bytes=200)
    many = await post(client, orjson.dumps([{"event_id": str(n)} for n in range(4)]))
    assert many.status == 413 and (await many.json())["error"] == "too_many_items"
    big = await post(client, orjson.dumps([{"event_id": "x", "pad": "p" * 300}]))
    assert big.status == 413 and (await big.json())["error"] == "payload_too_large"
    assert await stored(db) == []


async def test_a_batch_may_be_larger_than_one_event_may_be(make_client, db) -> None:
    client = await make_client(max_body_bytes=100, max_batch_bytes=10_000)
    body = orjson.dumps([{"event_id": str(n), "pad": "p" * 50} for n in range(20)])
    assert len(body) > 100
    resp = await post(client, body)
    assert resp.status == 200 and (await resp.json())["counts"]["accepted"] == 20


async def test_provider_sources_take_no_batches(provider_client, db) -> None:
    client = await provider_client('[sources.shop]\nscheme = "shopify"\nsecrets = ["k"]\n')
    body = orjson.dumps([{"event_id": "x"}])
    resp = await client.post("/pos/shop/ingest/batch", data=body, headers=headers(body))
    assert resp.status == 404 and (await resp.json())["error"] == "unknown_source"


async def test_a_database_failure_is_503_and_the_retry_settles_every_item(client, db) -> None:
    body = orjson.dumps([{"event_id": f"e-{n}"} for n in range(10)])
    await post(client, orjson.dumps([{"event_id": "e-3"}]))  # one of them is stored already
    async with sqlstate_fault(db, "53100"):  # disk full
        failed = await post(client, body)
        assert failed.status == 503 and failed.headers["Retry-After"] == "5"
        assert len(await stored(db)) == 1
    retried = await (await post(client, body)).json()
    assert retried["counts"] == {"accepted": 9, "duplicate": 1, "conflict": 0, "invalid": 0}
    assert len(await stored(db)) == 10
