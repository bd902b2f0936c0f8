"""GET /events: tokens and their tenants, the page shape, bad parameters, the
cursor, waiting at the head, and the 410 behind retention."""

from __future__ import annotations

import asyncio
import base64
from urllib.parse import urlencode

import pytest

from codex_ingest.settings import ReadToken
from codex_ingest.storage import retention
from codex_ingest.storage.delivery import Cursor
from codex_ingest.storage.queries import load_queries
from tests.helpers import SECRET, headers, in_background, metric_samples, readers_waiting, until

ALL = "reader-token-all-tenants-0123456789"
SHOP_A = "reader-token-shop-a-only-0123456789"
TOKENS = (ReadToken(ALL, None), ReadToken(SHOP_A, frozenset({"shop-a"})))
INGEST = "/pos/square/ingest"


@pytest.fixture
async def reader(make_client):
    return await make_client(api_tokens=TOKENS)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post(client, n: int, tenant: str = "shop-a", source: str = "square") -> int:
    body = b'{"type":"order.created","n":%d}' % n
    resp = await client.post(f"/pos/{source}/ingest", data=body, headers=headers(body, tenant=tenant))
    assert resp.status == 201, await resp.text()
    return (await resp.json())["event_id"]


async def read(client, token: str = ALL, **params) -> dict:
    resp = await client.get("/events?" + urlencode({"tenant": "shop-a", **params}), headers=bearer(token))
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    return await resp.json()


async def test_reading_is_off_without_tokens(client) -> None:
    resp = await client.get("/events?tenant=shop-a", headers=bearer(ALL))
    assert resp.status == 404


@pytest.mark.parametrize("authorization", [None, "Bearer nope-not-a-token-at-all", f"Basic {ALL}", f"Bearer {SECRET}", "Bearer "])
async def test_no_token_or_an_unknown_one_is_401(reader, authorization) -> None:
    resp = await reader.get("/events?tenant=shop-a", headers={} if authorization is None else {"Authorization": authorization})
    assert resp.status == 401
    assert (await resp.json())["error"] == "unauthorized"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_token_reads_only_its_tenants(reader, db) -> None:
    await post(reader, 1, tenant="shop-a")
    await post(reader, 2, tenant="shop-b")
    assert [e["tenant_id"] for e in (await read(reader, SHOP_A))["events"]] == ["shop-a"]
    other = await reader.get("/events?tenant=shop-b", headers=bearer(SHOP_A))
    assert other.status == 403
    assert (await other.json())["error"] == "forbidden"
    assert [e["tenant_id"] for e in (await read(reader, ALL, tenant="shop-b"))["events"]] == ["shop-b"]


async def test_a_page_carries_the_exact_stored_bytes_and_a_cursor(reader, db) -> None:
    body = b'{"type":"payment.updated","id":"evt_1","note":"caf\\u00e9 \\u0000"}'
    resp = await reader.post(INGEST, data=body, headers=headers(body, tenant="shop-a", **{"Idempotency-Key": "k-1"}))
    event_id = (await resp.json())["event_id"]
    page = await read(reader)
    assert set(page) == {"events", "next_cursor"}
    [event] = page["events"]
    assert set(event) == {"event_id", "tenant_id", "source", "idempotency_key", "received_at", "content_type", "headers",
                          "body_base64"}
    # What the scheme read, as sent: the signature, the key and the tenant, with the common headers.
    sent = {k.lower(): v for k, v in headers(body, tenant="shop-a", **{"Idempotency-Key": "k-1"}).items()}
    assert event["headers"]["x-signature"] == sent["x-signature"]
    assert event["headers"]["idempotency-key"] == "k-1" and event["headers"]["x-tenant-id"] == "shop-a"
    assert event["headers"]["content-type"] == sent["content-type"]
    assert (event["event_id"], event["tenant_id"], event["source"], event["idempotency_key"]) == (event_id, "shop-a", "square", "k-1")
    assert base64.b64decode(event["body_base64"]) == body
    assert event["content_type"] == "application/json"
    assert event["received_at"].startswith("20")
    # Nothing after it yet: an empty page keeps the consumer where it is.
    after = await read(reader, after=page["next_cursor"])
    # Nothing after it: the same position, stamped by this read (Cursor compares positions).
    assert after["events"] == [] and Cursor.decode(after["next_cursor"]) == Cursor.decode(page["next_cursor"])


async def test_an_empty_tenant_still_gets_a_cursor_to_continue_from(reader, db) -> None:
    first = await read(reader)
    assert first["events"] == [] and first["next_cursor"]
    await post(reader, 1)
    assert len((await read(reader, after=first["next_cursor"]))["events"]) == 1


async def test_following_next_cursor_gets_every_event_once_in_order_with_limit_and_source(reader, db) -> None:
    ids = [await post(reader, n, source="square" if n % 3 else "toast") for n in range(12)]
    seen: list[int] = []
    cursor = None
    for _ in range(10):
        page = await read(reader, limit=5, **({"after": cursor} if cursor else {}))
        seen += [e["event_id"] for e in page["events"]]
        cursor = page["next_cursor"]
        if not page["events"]:
            break
    assert seen == ids
    toast = await read(reader, source="toast", limit=1000)
    assert [e["event_id"] for e in toast["events"]] == [i for n, i in enumerate(ids) if n % 3 == 0]


async def test_limit_defaults_to_100(reader, db) -> None:
    bodies = [b'{"n":%d}' % n for n in range(150)]
    await asyncio.gather(*(reader.post(INGEST, data=b, headers=headers(b, tenant="shop-a")) for b in bodies))
    assert len((await read(reader))["events"]) == 100
    assert len((await read(reader, limit=1000))["events"]) == 150


@pytest.mark.parametrize(("params", "code"), [
    ({"limit": "0"}, "invalid_limit"),
    ({"limit": "1001"}, "invalid_limit"),
    ({"limit": "ten"}, "invalid_limit"),
    ({"wait": "31"}, "invalid_wait"),
    ({"wait": "-1"}, "invalid_wait"),
    ({"wait": "nan"}, "invalid_wait"),
    ({"after": "not-a-cursor"}, "invalid_cursor"),
    ({"after": base64.urlsafe_b64encode(b"12:x").decode()}, "invalid_cursor"),
    ({"source": "Bad Source"}, "invalid_source"),
    ({"tenant": "bad tenant!"}, "invalid_tenant"),
])
async def test_bad_parameters_are_400_with_a_json_error(reader, db, params, code) -> None:
    resp = await reader.get("/events?" + urlencode({"tenant": "shop-a", **params}), headers=bearer(ALL))
    assert resp.status == 400, await resp.text()
    doc = await resp.json()
    assert doc["error"] == code and doc["detail"]


@pytest.mark.parametrize("tenant", ["", "*", "shop a", "-shop"])
async def test_a_tenant_that_is_not_a_tenant_name_is_400(reader, tenant: str) -> None:
    resp = await reader.get("/events?" + urlencode({"tenant": tenant}), headers=bearer(ALL))
    assert resp.status == 400
    error = await resp.json()
    assert error["error"] == "invalid_tenant" and "leave it out" in error["detail"], error


async def test_a_waiting_reader_is_woken_by_a_new_event_not_by_its_timeout(reader, db) -> None:
    cursor = (await read(reader))["next_cursor"]
    loop = asyncio.get_running_loop()
    notified = asyncio.Event()
    await db.add_listener("codex_events", lambda *_: notified.set())
    async with in_background(read(reader, after=cursor, wait=30)) as waiting:
        await until(lambda: readers_waiting(reader), "the reader to wait at the head")
        assert not waiting.done()
        event_id = await post(reader, 1)
        acknowledged = loop.time()
        # The write announces itself (READ_NOTIFY) ...
        await until(notified.is_set, "the NOTIFY that follows the write")
        page = await waiting
    # ... and the reader answers then, not at its 30 s timeout: the bound sits far
    # from both (milliseconds here; bench/ measures how fast).
    assert loop.time() - acknowledged < 15
    assert [e["event_id"] for e in page["events"]] == [event_id]


async def test_a_wait_with_nothing_new_answers_empty_when_the_time_is_up(reader, db) -> None:
    cursor = (await read(reader))["next_cursor"]
    loop = asyncio.get_running_loop()
    started = loop.time()
    page = await read(reader, after=cursor, wait=1)
    assert page["events"] == [] and Cursor.decode(page["next_cursor"]) == Cursor.decode(cursor)
    # It waits the time out (the clock started before the request, so it
    # cannot read short), then answers: the upper bound only says "not much
    # later", with room for a slow machine.
    assert 1.0 <= loop.time() - started < 1.0 + 5


async def test_readers_waiting_and_events_served_are_metrics(reader, db) -> None:
    cursor = (await read(reader))["next_cursor"]
    async with in_background(read(reader, after=cursor, wait=30)) as waiting:
        assert await until(lambda: readers_waiting(reader), "the reader to wait at the head") == 1.0
        await post(reader, 1)
        await waiting

    async def answered() -> tuple[float, float] | None:
        # Polled: a scrape may be served a rendering a moment old.
        samples = await metric_samples(reader)
        now = samples["codex_ingest_readers_waiting"], samples["codex_ingest_events_served_total"]
        return now if now[0] == 0.0 else None

    assert await until(answered, "the reader to leave the head") == (0.0, 1.0)


async def test_a_cursor_behind_purged_events_is_410_and_a_fresh_read_starts_after_them(reader, db) -> None:
    for n in range(3):
        await post(reader, n)
    first = await read(reader, limit=1)
    await db.execute("UPDATE events SET received_at = now() - interval '2 days' WHERE id <= 2")
    assert await retention.purge(db, load_queries(), older_than=86400) == 2
    resp = await reader.get("/events?" + urlencode({"tenant": "shop-a", "after": first["next_cursor"]}), headers=bearer(ALL))
    assert resp.status == 410
    assert (await resp.json())["error"] == "cursor_expired"
    # Reading from the start is allowed: it begins at the oldest retained event.
    assert [e["event_id"] for e in (await read(reader))["events"]] == [3]


async def test_a_cursor_at_or_after_the_purge_horizon_reads_on(reader, db) -> None:
    for n in range(3):
        await post(reader, n)
    upto_two = await read(reader, limit=2)
    await db.execute("UPDATE events SET received_at = now() - interval '2 days' WHERE id <= 2")
    await retention.purge(db, load_queries(), older_than=86400)
    assert [e["event_id"] for e in (await read(reader, after=upto_two["next_cursor"]))["events"]] == [3]


async def test_a_purged_key_is_accepted_as_new(reader, db) -> None:
    body = b'{"n":"again"}'
    first = await reader.post(INGEST, data=body, headers=headers(body, tenant="shop-a"))
    assert first.status == 201
    await db.execute("UPDATE events SET received_at = now() - interval '2 days'")
    await retention.purge(db, load_queries(), older_than=86400)
    again = await reader.post(INGEST, data=body, headers=headers(body, tenant="shop-a"))
    assert again.status == 201
    assert (await again.json())["event_id"] != (await first.json())["event_id"]


async def test_a_notification_that_lands_while_a_reader_reads_wakes_its_next_wait_at_once() -> None:
    # The reader marks the listener before reading; a wake-up between its read
    # and its wait must not be lost (it would wait out its whole timeout).
    from codex_ingest.storage.notify import HeadWatch

    watch = HeadWatch("postgresql://unused@127.0.0.1:1/x", "NOTIFY codex_events", connect_timeout=1)
    mark = watch.mark()
    watch._wake()  # the listener's callback, as a NOTIFY arrives mid-read
    # At once: done within one turn of the loop, not after some time (its timeout is 30 s).
    woken = asyncio.ensure_future(watch.wait(30, since=mark))
    await asyncio.sleep(0)
    assert woken.done() and woken.result() is True
    assert await watch.wait(0.05, since=watch.mark()) is False  # nothing new since: the timeout
