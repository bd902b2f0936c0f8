"""Batch limits (issue 18, A and B): an item is held to MAX_BODY_BYTES like a
single event, and a batch of more than BATCH_MAX_ITEMS is refused before its
items are built."""

from __future__ import annotations

import urllib.error
import urllib.request

import orjson
import pytest

from bench.local import status_kb
from tests.helpers import headers, sign, stored
from tests.live import serve

URL = "/pos/pos-terminal/ingest/batch"
MIB = 1024 * 1024


def post(client, body: bytes, content_type: str = "application/json"):
    return client.post(URL, data=body, headers={**headers(body), "Content-Type": content_type})


def items_of(events: list[bytes], content_type: str) -> bytes:
    return b"\n".join(events) if content_type == "application/x-ndjson" else b"[" + b",".join(events) + b"]"


# Items that look like the end of an item or of the array, inside strings; spacing; a
# nested object; items that are no events. Parsed the same whichever road they take.
TRICKY = [b'{"id":"a,b]"}', b' {"event_id" : "c\\"]}" , "x":[1,{"y":"}{"}]} ', b'"not an event"', b"[1, 2]"]
TRICKY_ANSWERS = [("accepted", None), ("accepted", None), ("invalid", "invalid_json"), ("invalid", "invalid_json")]
TRICKY_STORED = {"a,b]": b'{"id":"a,b]"}', 'c"]}': b'{"event_id":"c\\"]}","x":[1,{"y":"}{"}]}'}


@pytest.mark.parametrize("content_type", ["application/json", "application/x-ndjson"])
async def test_an_item_over_max_body_bytes_is_invalid_alone_and_the_others_are_stored(make_client, db, content_type) -> None:
    client = await make_client(max_body_bytes=1000, max_batch_bytes=100_000)
    big = b'{"event_id":"big","pad":"' + b"p" * 3000 + b'"}'
    single = await client.post("/pos/pos-terminal/ingest", data=big, headers=headers(big))
    assert single.status == 413  # what the same event gets on its own

    events = [*TRICKY, big, b'{"event_id":"b"}'] if content_type == "application/json" else [b'{"event_id":"a"}', big, b'{"event_id":"b"}']
    resp = await post(client, items_of(events, content_type), content_type)
    assert resp.status == 200, await resp.text()
    doc = await resp.json()
    results = [(r["status"], r["error"]) for r in doc["results"]]
    assert results[-2:] == [("invalid", "payload_too_large"), ("accepted", None)]
    assert "1000" in doc["results"][-2]["detail"]
    rows = {r["idempotency_key"]: bytes(r["body"]) for r in await stored(db)}
    assert "big" not in rows and "b" in rows
    if content_type == "application/json":  # the array was scanned for its items: each found whole
        assert results[:-2] == TRICKY_ANSWERS
        assert {k: v for k, v in rows.items() if k != "b"} == TRICKY_STORED


@pytest.fixture(params=["parsed whole", "scanned"])
def road(request: pytest.FixtureRequest) -> str:
    """A batch no larger than MAX_BODY_BYTES is parsed whole; a larger one is scanned for its items."""
    return request.param


def by_road(road: str, items: list[bytes], limit: int) -> bytes:
    body = b"[" + b",".join(items) + b"]"
    if road == "scanned":  # padded past the limit with an item of its own, within it
        body = b"[" + b",".join([*items, b'{"event_id":"pad","p":"' + b"p" * (limit - 30) + b'"}']) + b"]"
    assert (len(body) > limit) == (road == "scanned")
    return body


async def test_an_array_item_is_held_to_the_limit_as_stored_too(make_client, db, road) -> None:
    # An array item is stored re-serialized: 1e9 is stored as 1000000000.0. Sent in
    # about 700 bytes, it would be stored in about 2,200: over the limit, like a single
    # event of that size.
    client = await make_client(max_body_bytes=1000, max_batch_bytes=100_000)
    grows = b'{"event_id":"grows","n":[' + b",".join([b"1e9"] * 170) + b"]}"
    assert len(grows) < 1000 < len(orjson.dumps(orjson.loads(grows)))
    doc = await (await post(client, by_road(road, [grows, b'{"event_id":"ok"}'], 1000))).json()
    assert [(r["status"], r["error"]) for r in doc["results"]][:2] == [("invalid", "payload_too_large"), ("accepted", None)]
    assert "grows" not in {r["idempotency_key"] for r in await stored(db)}


async def test_an_item_nested_deeper_than_254_levels_refuses_the_batch_not_500(make_client, db, road) -> None:
    client = await make_client(max_body_bytes=2000, max_batch_bytes=100_000)

    def nested(levels: int, kind: bytes = b"{") -> bytes:  # the item itself is the first level
        inner = b"[" * (levels - 1) + b"]" * (levels - 1)
        return b'{"event_id":"deep-%d","x":%s}' % (levels, inner) if kind == b"{" else b"[" + inner + b"]"

    # It is stored re-serialized, and orjson writes at most 254 levels: deeper was a 500.
    deepest = await post(client, by_road(road, [b'{"event_id":"a"}', nested(254)], 2000))
    assert (await deepest.json())["counts"]["accepted"] >= 2
    await db.execute("TRUNCATE events")
    for item in (nested(255), nested(255, kind=b"[")):  # an event, or an item that is not one
        resp = await post(client, by_road(road, [b'{"event_id":"a"}', item], 2000))
        assert resp.status == 400, await resp.text()
        doc = await resp.json()
        assert doc["error"] == "invalid_json" and "254" in doc["detail"]
    assert await stored(db) == []


def post_live(port: int, body: bytes, content_type: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{URL}", data=body, method="POST",
        headers={"Content-Type": content_type, "X-Tenant-Id": "tenant-1", "X-Signature": sign(body)})
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read())


@pytest.mark.parametrize("content_type", ["application/json", "application/x-ndjson"])
def test_millions_of_items_are_refused_without_being_built(database_url: str, content_type: str) -> None:
    # 8 MiB of {} is 2.8 million items. Building them all before counting took a
    # worker's peak RSS from about 50 to 300 MiB; counting first, only the body's
    # own copies are added. The bound is generous: twelve times the body.
    body = items_of([b"{}"] * ((8 * MIB - 2) // 3), content_type)
    assert len(body) <= 8 * MIB
    with serve(database_url) as service:  # of its own: its peak RSS is this request's
        before = status_kb(service.process.pid, "VmHWM")
        status, doc = post_live(service.port, body, content_type)
        after = status_kb(service.process.pid, "VmHWM")
    assert (status, doc["error"]) == (413, "too_many_items")
    assert before is not None and after is not None
    grown_mib = (after - before) / 1024
    assert grown_mib < 12 * len(body) / MIB, f"peak RSS grew by {grown_mib:.0f} MiB for a {len(body) / MIB:.0f} MiB body"


async def test_a_clover_change_too_deep_to_store_is_400_not_500(provider_client, db) -> None:
    # Clover's changes are stored one by one, re-serialized, as array items are:
    # a change orjson cannot write back (more than 251 levels inside its envelope) was a 500.
    client = await provider_client('[sources.clover]\nscheme = "clover"\nsecrets = ["clover-auth"]\n')

    def notification(levels: int) -> bytes:
        inner = b"[" * (levels - 1) + b"]" * (levels - 1)
        return b'{"appId":"A","merchants":{"M1":[{"objectId":"O:%d","type":"CREATE","ts":1,"x":%s}]}}' % (levels, inner)

    auth = {"Content-Type": "application/json", "X-Clover-Auth": "clover-auth"}
    assert (await client.post("/pos/clover/ingest", data=notification(251), headers=auth)).status == 201
    resp = await client.post("/pos/clover/ingest", data=notification(252), headers=auth)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"] == "invalid_json"
    assert len(await stored(db)) == 1
