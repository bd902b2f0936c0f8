"""Operating push delivery over HTTP (web/destinations.py, delivery/admin.py):
GET /destinations, the attempt log, replay, retry, enable and disable,
through the real app with its engine running and real receivers on
127.0.0.1 (tests/delivery/receivers.py). Waits are for conditions, never
for durations."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from codex_ingest.delivery.config import parse_destinations
from codex_ingest.intake.sources import parse_sources
from codex_ingest.settings import ReadToken
from codex_ingest.web.app import create_app
from tests.delivery.receivers import Respond, error, fails_then, hang, ok, receiver, script
from tests.delivery.test_engine import SECRET, destination_toml, states
from tests.helpers import assert_error, headers, until

OPERATOR = "operator-token-every-tenant-0123456789"
SCOPED = "reader-token-shop-a-only-0123456789"
TOKENS = (ReadToken(OPERATOR, None), ReadToken(SCOPED, frozenset({"shop-a"})))
AUTH = {"Authorization": f"Bearer {OPERATOR}"}
ROUTES = [
    ("GET", "/destinations"),
    ("GET", "/destinations/backend/attempts"),
    ("POST", "/destinations/backend/replay"),
    ("POST", "/destinations/backend/retry"),
    ("POST", "/destinations/backend/enable"),
    ("POST", "/destinations/backend/disable"),
]
REPLAY_BODY = b'{"since": "2026-01-01T00:00:00Z"}'


@pytest.fixture
def operating(aiohttp_client, settings, db):
    """A client of the app with these destinations (TOML; None: no sources file) and the read tokens
    above, its engine running."""

    async def make(toml: str | None, **changes: object):
        table = None if toml is None else parse_sources(toml, {}, destinations=parse_destinations)
        app = create_app(replace(settings, source_table=table, **{"api_tokens": TOKENS, **changes}))
        return await aiohttp_client(app)

    return make


async def post(client, n: int, tenant: str = "shop-a") -> int:
    body = b'{"type":"order.created","n":%d}' % n
    resp = await client.post("/pos/orders/ingest", data=body,
                             headers=headers(body, tenant=tenant, **{"Idempotency-Key": f"k-{n}"}))
    assert resp.status == 201, await resp.text()
    return (await resp.json())["event_id"]


async def call(client, method: str, path: str, *, status: int = 200, body: bytes | None = None,
               auth: dict[str, str] | None = None) -> dict:
    extra = {"Content-Type": "application/json"} if body is not None else {}
    resp = await client.request(method, path, data=body, headers={**(AUTH if auth is None else auth), **extra})
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    return await resp.json()


async def listed(client) -> dict[str, dict]:
    found = (await call(client, "GET", "/destinations"))["destinations"]
    return {d["name"]: d for d in found}


async def attempts(client, name: str = "backend", **params: str) -> dict:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return await call(client, "GET", f"/destinations/{name}/attempts" + (f"?{query}" if query else ""))


# -- who may ask ---------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_routes_are_404_while_reading_is_off(operating, method: str, path: str) -> None:
    client = await operating(destination_toml("backend", "http://127.0.0.1:9/hook"), api_tokens=())
    resp = await client.request(method, path, data=REPLAY_BODY, headers=AUTH)
    await assert_error(resp, 404, "not_found")


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("authorization", [None, "Bearer not-one-of-the-tokens-0123456789", f"Basic {OPERATOR}"])
async def test_no_token_or_an_unknown_one_is_401(operating, method: str, path: str, authorization) -> None:
    client = await operating(destination_toml("backend", "http://127.0.0.1:9/hook"))
    resp = await client.request(method, path, data=REPLAY_BODY,
                                headers={} if authorization is None else {"Authorization": authorization})
    await assert_error(resp, 401, "unauthorized")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path"), [*ROUTES, ("GET", "/destinations/nowhere/attempts"),
                                              ("POST", "/destinations/nowhere/disable")])
async def test_a_token_scoped_to_some_tenants_is_403_and_learns_nothing(operating, db, method: str, path: str) -> None:
    client = await operating(destination_toml("backend", "http://127.0.0.1:9/hook"))
    resp = await client.request(method, path, data=REPLAY_BODY, headers={"Authorization": f"Bearer {SCOPED}"})
    await assert_error(resp, 403, "forbidden")  # not 404 for an unknown name: nothing is said about names
    assert await db.fetchval("SELECT state FROM destination_state WHERE name = 'backend'") == "active"


@pytest.mark.parametrize(("method", "path"), [(m, p.replace("backend", "nowhere")) for m, p in ROUTES[1:]])
async def test_an_undeclared_destination_is_404(operating, db, method: str, path: str) -> None:
    client = await operating(destination_toml("backend", "http://127.0.0.1:9/hook"))
    resp = await client.request(method, path, data=REPLAY_BODY, headers=AUTH)
    await assert_error(resp, 404, "unknown_destination")
    assert await db.fetchval("SELECT count(*) FROM destination_state WHERE name = 'nowhere'") == 0


# -- GET /destinations ---------------------------------------------------------------------


async def test_list_shows_each_declared_destination_its_state_and_backlog(operating, db) -> None:
    async with (receiver(ok(), secret=SECRET) as healthy, receiver(error(500), secret=SECRET) as broken,
                receiver(error(503), secret=SECRET) as flaky, receiver(hang(), secret=SECRET) as stuck):
        toml = (destination_toml("healthy", healthy.url + "/path-token-s3cret?key=q-s3cret")
                + destination_toml("broken", broken.url, retry_schedule="[0.05]")
                + destination_toml("flaky", flaky.url, retry_schedule="[3600]")
                + destination_toml("stuck", stuck.url, timeout_seconds=60)
                + destination_toml("idle", healthy.url, tenants='["nobody"]'))
        client = await operating(toml)
        await post(client, 1)
        await post(client, 2)
        await until(states(db, "healthy", {"delivered": 2}), "both delivered to the healthy one")
        await until(states(db, "broken", {"parked": 2}), "both parked at the broken one")
        await flaky.wait_for(2)
        await stuck.wait_for(2)
        # A destination no worker has written a row for yet: listed all the same.
        await db.execute("DELETE FROM destination_state WHERE name = 'idle'")

        async def settled() -> dict[str, dict] | None:
            found = await listed(client)
            return found if found["flaky"]["failing"] == 2 and found["stuck"]["in_flight"] == 2 else None

        found = await until(settled, "the flaky one's failures recorded, the stuck one's requests in flight")
        response = await client.get("/destinations", headers=AUTH)
        assert "s3cret" not in await response.text()

    assert list(found) == ["healthy", "broken", "flaky", "stuck", "idle"]  # the file's order
    healthy_row, broken_row, flaky_row, stuck_row, idle_row = found.values()
    assert healthy_row == {
        "name": "healthy", "state": "active", "reason": None, "url_origin": healthy.base_url,
        "lag_events": 0, "scheduler_behind": False, "lag_seconds": 0.0, "in_flight": 0, "failing": 0, "parked": 0,
        "expired": 0, "last_success_at": healthy_row["last_success_at"], "last_failure_at": None,
    }
    assert datetime.fromisoformat(healthy_row["last_success_at"]) > datetime.now(UTC) - timedelta(minutes=5)
    assert (broken_row["parked"], broken_row["lag_events"], broken_row["failing"], broken_row["last_success_at"]) == (
        2, 0, 0, None)
    assert broken_row["last_failure_at"] is not None
    assert (flaky_row["lag_events"], flaky_row["failing"], flaky_row["in_flight"], flaky_row["parked"]) == (2, 2, 0, 0)
    assert flaky_row["lag_seconds"] > 0
    assert (stuck_row["lag_events"], stuck_row["in_flight"], stuck_row["failing"]) == (2, 2, 0)
    assert stuck_row["last_success_at"] is None and stuck_row["last_failure_at"] is None
    assert idle_row == {  # its position at the feed's start: the events are past it
        "name": "idle", "state": "active", "reason": None, "url_origin": healthy.base_url, "lag_events": 0,
        "scheduler_behind": True, "lag_seconds": 0.0, "in_flight": 0, "failing": 0,
        "parked": 0, "expired": 0, "last_success_at": None, "last_failure_at": None,
    }


async def test_expired_counts_events_retention_took_before_they_went_out(operating, db) -> None:
    client = await operating(destination_toml("backend", "http://127.0.0.1:9/hook"))
    await db.execute("INSERT INTO destination_state (name, expired) VALUES ('backend', 3)"
                     " ON CONFLICT (name) DO UPDATE SET expired = 3")
    await db.execute("INSERT INTO deliveries (destination, event_id, tenant_id, xact, state)"
                     " VALUES ('backend', 99, 'shop-a', '1', 'expired')")
    assert (await listed(client))["backend"]["expired"] == 4


@pytest.mark.parametrize("toml", [None, ""], ids=["no-sources-file", "no-destinations"])
async def test_the_list_is_empty_without_destinations(operating, toml: str | None) -> None:
    client = await operating(toml)
    assert await call(client, "GET", "/destinations") == {"destinations": []}
    resp = await client.post("/destinations/backend/enable", headers=AUTH)
    await assert_error(resp, 404, "unknown_destination")


# -- the attempt log -----------------------------------------------------------------------


async def test_attempts_come_newest_first_by_cursor_and_filter_by_outcome_status_and_tenant(operating, db) -> None:
    async with receiver(fails_then(2, per="webhook-id"), secret=SECRET) as hook:
        client = await operating(destination_toml("backend", hook.url, retry_schedule="[0.05, 0.05]"))
        ids = [await post(client, 1, "shop-a"), await post(client, 2, "shop-b"), await post(client, 3, "shop-a")]
        await until(states(db, "backend", {"delivered": 3}), "every event delivered after two failures")
        log = await db.fetch("SELECT event_id, tenant_id, attempt, status FROM delivery_attempts"
                             " WHERE destination = 'backend' ORDER BY id DESC")
        assert len(log) == 9
        newest_first = [(r["event_id"], r["tenant_id"], r["attempt"], r["status"]) for r in log]

        pages, cursor = [], None
        while True:
            page = await attempts(client, limit="4", **({"after": cursor} if cursor else {}))
            pages.append(page["attempts"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [len(p) for p in pages] == [4, 4, 1]
        seen = [(a["event_id"], a["tenant_id"], a["attempt"], a["status"]) for p in pages for a in p]
        assert seen == newest_first
        first = pages[0][0]
        assert set(first) == {"event_id", "tenant_id", "attempt", "status", "error", "duration_ms",
                              "response_excerpt", "at"}
        assert first["error"] is None and first["duration_ms"] >= 0
        failure = next(a for p in pages for a in p if a["status"] == 500)
        assert failure["error"] == "HTTP 500" and failure["response_excerpt"] == "receiver says no"

        delivered = (await attempts(client, status="delivered"))["attempts"]
        assert sorted(a["event_id"] for a in delivered) == sorted(ids) and {a["status"] for a in delivered} == {200}
        failed = (await attempts(client, status="failed"))["attempts"]
        assert len(failed) == 6 and {a["status"] for a in failed} == {500}
        assert (await attempts(client, status="500"))["attempts"] == failed
        assert (await attempts(client, status="200"))["attempts"] == delivered
        assert (await attempts(client, status="404"))["attempts"] == []
        shop_b = (await attempts(client, tenant="shop-b"))["attempts"]
        assert [a["event_id"] for a in shop_b] == [ids[1]] * 3
        # Events 1 and 3 retry side by side (jittered), so which 2xx came last is the log's to say.
        shop_a_2xx = [event_id for event_id, tenant, _, status in newest_first if tenant == "shop-a" and status == 200]
        assert sorted(shop_a_2xx) == sorted([ids[0], ids[2]])
        both = (await attempts(client, tenant="shop-a", status="delivered", limit="1"))
        assert [a["event_id"] for a in both["attempts"]] == shop_a_2xx[:1] and both["next_cursor"] is not None
        rest = await attempts(client, tenant="shop-a", status="delivered", after=both["next_cursor"])
        assert [a["event_id"] for a in rest["attempts"]] == shop_a_2xx[1:] and rest["next_cursor"] is None


@pytest.mark.parametrize(("query", "code"), [
    ("status=ok", "invalid_status"), ("status=99", "invalid_status"), ("status=600", "invalid_status"),
    ("status=%EF%BC%95%EF%BC%90%EF%BC%90", "invalid_status"),  # fullwidth 500
    ("status=", "invalid_status"),
    ("limit=0", "invalid_limit"), ("limit=1001", "invalid_limit"), ("limit=-1", "invalid_limit"),
    ("limit=%D9%A3", "invalid_limit"),  # Arabic-Indic 3
    ("after=garbage", "invalid_cursor"), ("after=NzY5OjE", "invalid_cursor"),  # a GET /events cursor
    ("after=YXR0Oi0x", "invalid_cursor"),  # att:-1
    ("after=YXR0Ojk5OTk5OTk5OTk5OTk5OTk5OTk", "invalid_cursor"),  # att:9999999999999999999, past a bigint
    ("tenant=*", "invalid_tenant"), ("tenant=", "invalid_tenant"),
])
async def test_bad_attempt_parameters_are_400(operating, query: str, code: str) -> None:
    client = await operating(destination_toml("backend", "http://127.0.0.1:9/hook"))
    resp = await client.get(f"/destinations/backend/attempts?{query}", headers=AUTH)
    await assert_error(resp, 400, code)


HOSTILE = ('<html><script>alert("owned")</script><img src=x onerror=alert(1)>'
           '\x01\x07\x08\x0b\x0c\x1b[31m\x7f\u2028\u2029 "quoted" \\back\\slash \ud7ff\ufeff</html>').encode()


async def test_a_hostile_response_excerpt_comes_back_as_inert_json_text(operating, db) -> None:
    body = HOSTILE + b"\xff\xfe not utf-8 " + b"x" * 3000
    async with receiver(Respond(500, {"Content-Type": "text/html"}, body), secret=SECRET) as hook:
        client = await operating(destination_toml("backend", hook.url, retry_schedule="[3600]"))
        await post(client, 1)
        await hook.wait_for(1, settled=True)

        async def recorded() -> dict | None:
            page = await attempts(client)
            return page if page["attempts"] else None

        page = await until(recorded, "the attempt recorded")

        resp = await client.get("/destinations/backend/attempts", headers=AUTH)
        raw = await resp.read()
    assert resp.content_type == "application/json" and resp.headers["X-Content-Type-Options"] == "nosniff"
    # Every control character is escaped by the serializer: none reaches the wire as it is.
    assert not [b for b in raw if b < 0x20]
    (attempt,) = json.loads(raw)["attempts"]
    assert attempt == page["attempts"][0]
    excerpt = attempt["response_excerpt"]
    # The text as received, no more than 1 KB of it, HTML not stripped, escaped, nor interpreted.
    assert excerpt.startswith(HOSTILE.decode())
    assert len(excerpt) <= 1024
    assert "\\u0001" in raw.decode() and "<script>" in raw.decode()


# -- replay --------------------------------------------------------------------------------


async def test_replay_sends_matching_events_again_with_their_original_webhook_ids(operating, db) -> None:
    async with receiver(ok(), secret=SECRET) as hook:
        toml = destination_toml("backend", hook.url, tenants='["shop-a", "shop-b"]')
        client = await operating(toml)
        start = await db.fetchval("SELECT now()")
        a1, b1, a2 = await post(client, 1, "shop-a"), await post(client, 2, "shop-b"), await post(client, 3, "shop-a")
        await post(client, 4, "shop-c")  # not this destination's
        await hook.wait_for(3)
        await until(states(db, "backend", {"delivered": 3}), "the first deliveries recorded")

        since = start.isoformat()
        assert await call(client, "POST", "/destinations/backend/replay", status=202,
                          body=json.dumps({"since": since, "tenant": "shop-a"}).encode()) == {"replayed": 2}
        await hook.wait_for(5)
        await until(states(db, "backend", {"delivered": 3}), "the replays recorded")
        assert sorted(hook.verified_ids()[3:]) == sorted([f"evt_{a1}", f"evt_{a2}"])

        assert await call(client, "POST", "/destinations/backend/replay", status=202,
                          body=json.dumps({"since": since}).encode()) == {"replayed": 3}
        await hook.wait_for(8)
        assert not hook.unverified(), hook.summary()
        assert sorted(hook.verified_ids()) == sorted(
            [f"evt_{a1}"] * 3 + [f"evt_{a2}"] * 3 + [f"evt_{b1}"] * 2)

        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert await call(client, "POST", "/destinations/backend/replay", status=202,
                          body=json.dumps({"since": later}).encode()) == {"replayed": 0}
        assert await call(client, "POST", "/destinations/backend/replay", status=202,
                          body=json.dumps({"since": since, "tenant": "shop-c"}).encode()) == {"replayed": 0}
        await until(states(db, "backend", {"delivered": 3}), "every replay recorded")
        assert len(hook.arrivals) == 8


async def test_replay_leaves_a_delivery_in_flight_to_its_sender(operating, db) -> None:
    """Clearing the lease of a delivery being sent would let another sender claim it and
    send it a second time at once; the replay counts it and leaves it to the send under way."""
    async with receiver(script(ok(), then=hang()), secret=SECRET) as hook:
        client = await operating(destination_toml("backend", hook.url, timeout_seconds=60))
        start = await db.fetchval("SELECT now()")
        done = await post(client, 1)
        await until(states(db, "backend", {"delivered": 1}), "the first event delivered")
        sending = await post(client, 2)
        await hook.until(lambda arrivals: any(a.answer == "hanging" for a in arrivals), what="the second in flight")
        leased = await db.fetchrow("SELECT lease_token, attempts FROM deliveries WHERE event_id = $1", sending)
        assert leased["lease_token"] is not None

        assert await call(client, "POST", "/destinations/backend/replay", status=202,
                          body=json.dumps({"since": start.isoformat()}).encode()) == {"replayed": 2}
        after = await db.fetchrow("SELECT state, lease_token, attempts FROM deliveries WHERE event_id = $1", sending)
        assert (after["state"], after["lease_token"], after["attempts"]) == ("pending", leased["lease_token"],
                                                                             leased["attempts"])
        await hook.until(lambda arrivals: [a.webhook_id for a in arrivals].count(f"evt_{done}") == 2,
                         what="the delivered event sent again")


@pytest.mark.parametrize(("body", "code"), [
    (b"", "invalid_json"), (b"not json", "invalid_json"), (b"[]", "invalid_json"), (b'"2026-01-01T00:00:00Z"', "invalid_json"),
    (b'{"since": "2026-01-01T00:00:00Z", "tenants": "shop-a"}', "invalid_json"),
    (b"\xff\xfe", "invalid_json"),
    (b"{}", "invalid_since"), (b'{"since": null}', "invalid_since"), (b'{"since": 1764000000}', "invalid_since"),
    (b'{"since": "yesterday"}', "invalid_since"),
    (b'{"since": "2026-01-01T00:00:00"}', "invalid_since"),  # RFC 3339 needs its offset
    (b'{"since": "2026-13-01T00:00:00Z"}', "invalid_since"),
    (b'{"since": "2026-01-01"}', "invalid_since"),
    (b'{"since": "\xef\xbc\x92026-01-01T00:00:00Z"}', "invalid_since"),  # a fullwidth digit
    (b'{"since": "0001-01-01T00:00:00+01:00"}', "invalid_since"),  # before year 1 in UTC
    (b'{"since": "9999-12-31T23:59:59-01:00"}', "invalid_since"),  # after 9999 in UTC
    (b'{"since": "2026-01-01T00:00:00Z", "tenant": "*"}', "invalid_tenant"),
    (b'{"since": "2026-01-01T00:00:00Z", "tenant": 7}', "invalid_tenant"),
])
async def test_a_bad_replay_body_is_400(operating, db, body: bytes, code: str) -> None:
    client = await operating(destination_toml("backend", "http://127.0.0.1:9/hook"))
    resp = await client.post("/destinations/backend/replay", data=body,
                              headers={**AUTH, "Content-Type": "application/json"})
    await assert_error(resp, 400, code)
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 0


async def test_a_replay_body_over_16_kib_is_413(operating) -> None:
    client = await operating(destination_toml("backend", "http://127.0.0.1:9/hook"))
    body = json.dumps({"since": "2026-01-01T00:00:00Z", "tenant": "a" * 127, "pad": "x" * 17000}).encode()
    resp = await client.post("/destinations/backend/replay", data=body, headers=AUTH)
    await assert_error(resp, 413, "payload_too_large")


# -- retry ---------------------------------------------------------------------------------


async def test_retry_sends_parked_events_again_once_the_receiver_recovers(operating, db) -> None:
    async with receiver(error(500), secret=SECRET) as hook:
        client = await operating(destination_toml("backend", hook.url, retry_schedule="[0.05]"))
        ids = [await post(client, 1), await post(client, 2)]
        await until(states(db, "backend", {"parked": 2}), "both parked after their last retry")
        assert (await listed(client))["backend"]["parked"] == 2
        hook.behaviour = ok()  # the receiver is fixed
        failed_before = len(hook.arrivals)

        assert await call(client, "POST", "/destinations/backend/retry", status=202) == {"retried": 2}
        await until(states(db, "backend", {"delivered": 2}), "both delivered after the retry")
        again = hook.arrivals[failed_before:]
        assert sorted(a.webhook_id for a in again) == sorted(f"evt_{i}" for i in ids)
        assert all(a.verified and a.status == 200 for a in again)
        assert (await listed(client))["backend"]["parked"] == 0
        assert await call(client, "POST", "/destinations/backend/retry", status=202) == {"retried": 0}


# -- disable and enable --------------------------------------------------------------------


async def test_disable_stops_deliveries_and_enable_resumes_them(operating, db) -> None:
    """A disabled destination's due deliveries stay unsent for as long as another
    destination takes to go through two full retry cycles of the same engine
    (its sender's idle polls): the disabled one's sender polled in that time."""
    async with (receiver(fails_then(1, per="webhook-id"), secret=SECRET) as hook,
                receiver(fails_then(2, per="webhook-id"), secret=SECRET) as witness):
        toml = (destination_toml("backend", hook.url, tenants='["shop-a"]', retry_schedule="[2]")
                + destination_toml("witness", witness.url, tenants='["witness"]', retry_schedule="[0.05, 0.05]"))
        client = await operating(toml)
        first = await post(client, 1)
        await hook.wait_for(1, settled=True)  # its first attempt failed; the retry is due in about 2 s

        assert await call(client, "POST", "/destinations/backend/disable") == {"name": "backend", "state": "disabled"}
        shown = (await listed(client))["backend"]
        assert (shown["state"], shown["reason"]) == ("disabled", "disabled by an operator")
        later = await post(client, 2)  # stored while disabled
        # Scheduled all the same (only sending stops): the backlog shows what it owes.
        await until(lambda: listed_lag(client, "backend", 2), "the event stored while disabled counted in its lag")

        async def retry_due() -> bool:
            return await db.fetchval("SELECT attempts = 1 AND next_at <= now() AND lease_until IS NULL FROM deliveries"
                                     " WHERE destination = 'backend' AND event_id = $1", first)

        await until(retry_due, "the failed delivery due again, and not claimed")
        await post(client, 3, tenant="witness")
        await witness.wait_for(3, settled=True)  # fail, retry after an idle poll, fail, again, 200
        assert [a.status for a in witness.arrivals] == [500, 500, 200]
        assert hook.ids() == [f"evt_{first}"], hook.summary()  # nothing sent while disabled
        shown = (await listed(client))["backend"]
        assert (shown["state"], shown["in_flight"]) == ("disabled", 0)

        assert await call(client, "POST", "/destinations/backend/enable") == {"name": "backend", "state": "active"}
        await until(states(db, "backend", {"delivered": 2}), "both delivered once enabled")
        assert not hook.unverified(), hook.summary()
        assert [a.status for a in hook.by_id(f"evt_{first}")] == [500, 200]
        assert [a.status for a in hook.by_id(f"evt_{later}")] == [500, 200]
        shown = (await listed(client))["backend"]
        assert (shown["state"], shown["reason"], shown["lag_events"]) == ("active", None, 0)


async def listed_lag(client, name: str, events: int) -> bool:
    return (await listed(client))[name]["lag_events"] == events


async def test_enable_makes_a_delivery_waiting_for_its_retry_due_at_once(operating, db) -> None:
    async with receiver(fails_then(1, per="webhook-id"), secret=SECRET) as hook:
        client = await operating(destination_toml("backend", hook.url, retry_schedule="[3600]"))
        event_id = await post(client, 1)
        await hook.wait_for(1, settled=True)
        await until(lambda: db.fetchval("SELECT attempts = 1 AND lease_until IS NULL AND next_at > now() + interval '1 hour' * 0.5"
                                        " FROM deliveries WHERE destination = 'backend'"),
                    "the failure recorded, its retry an hour away")
        await call(client, "POST", "/destinations/backend/disable")
        await call(client, "POST", "/destinations/backend/enable")
        await until(states(db, "backend", {"delivered": 1}), "delivered at once, not in an hour")
        assert [a.status for a in hook.by_id(f"evt_{event_id}")] == [500, 200]


async def test_state_changes_are_idempotent_and_need_no_running_worker(operating, db) -> None:
    client = await operating(destination_toml("backend", "http://127.0.0.1:9/hook"))
    await db.execute("DELETE FROM destination_state")  # as before any worker started it
    for _ in range(2):
        assert await call(client, "POST", "/destinations/backend/disable") == {"name": "backend", "state": "disabled"}
    assert await db.fetchval("SELECT state FROM destination_state WHERE name = 'backend'") == "disabled"
    for _ in range(2):
        assert await call(client, "POST", "/destinations/backend/enable") == {"name": "backend", "state": "active"}
    row = await db.fetchrow("SELECT state, reason FROM destination_state WHERE name = 'backend'")
    assert (row["state"], row["reason"]) == ("active", None)
