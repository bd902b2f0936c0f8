"""The console's destination pages and every change made from them, through the
real app, its delivery engine and real receivers on 127.0.0.1: a change needs
a token reading every tenant, is written to the audit table (who: a digest,
never the token), and does what the HTTP API's does."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from html import unescape

import pytest

from codex_ingest.delivery.config import parse_destinations
from codex_ingest.intake.sources import parse_sources
from codex_ingest.web.app import create_app
from tests.console.test_pages import OPERATOR, SCOPED, TOKENS, post, sign_in
from tests.delivery.receivers import error, ok, receiver
from tests.delivery.test_engine import SECRET, states, destination_toml
from tests.helpers import until

ACTOR = hashlib.sha256(OPERATOR.encode()).hexdigest()[:12]


@pytest.fixture
def operating(aiohttp_client, settings, db):
    async def make(toml: str):
        table = parse_sources(toml, {}, destinations=parse_destinations)
        return await aiohttp_client(create_app(replace(settings, source_table=table, api_tokens=TOKENS)))

    return make


async def audit(db) -> list[tuple[str, str, str]]:
    rows = await db.fetch("SELECT actor, action, destination, detail::text AS detail FROM console_audit ORDER BY id")
    assert all(OPERATOR not in (r["detail"] or "") for r in rows)
    return [(r["actor"], r["action"], r["destination"]) for r in rows]


async def test_a_scoped_token_may_look_at_events_but_change_no_delivery(operating, db) -> None:
    client = await operating(destination_toml("backend", "http://127.0.0.1:9/hook"))
    event_id = await post(client, 1)
    await sign_in(client, SCOPED)
    for method, path in [("GET", "/console/destinations"), ("GET", "/console/destinations/backend"),
                         ("POST", "/console/destinations/backend/retry"),
                         ("POST", "/console/destinations/backend/disable"),
                         ("POST", f"/console/events/{event_id}/retry")]:
        resp = await client.request(method, path, data={"destination": "backend"}, allow_redirects=False)
        assert resp.status == 403, (method, path, resp.status)
    assert await audit(db) == []
    assert await db.fetchval("SELECT state FROM destination_state WHERE name = 'backend'") == "active"


async def test_disable_enable_retry_and_replay_are_done_and_audited(operating, db) -> None:
    async with receiver(error(500), secret=SECRET) as hook:
        client = await operating(destination_toml("backend", hook.url, retry_schedule="[0.05]"))
        ids = [await post(client, n) for n in range(3)]
        await until(states(db, "backend", {"parked": 3}), "every event parked")
        await sign_in(client)
        page = await (await client.get("/console/destinations")).text()
        assert 'href="/console/destinations/backend"' in page

        assert (await client.post("/console/destinations/backend/disable", allow_redirects=False)).status == 303
        assert await db.fetchval("SELECT state FROM destination_state WHERE name = 'backend'") == "disabled"
        assert (await client.post("/console/destinations/backend/enable", allow_redirects=False)).status == 303
        hook.behaviour = ok()
        resp = await client.post("/console/destinations/backend/retry", allow_redirects=False)
        assert (resp.status, resp.headers["Location"]) == (303, "/console/destinations/backend")
        await until(states(db, "backend", {"delivered": 3}), "the parked events retried and delivered")

        # A replay asks first, saying how many events it will send again; nothing moves until confirmed.
        since = "2000-01-01T00:00"
        asked = await client.post("/console/destinations/backend/replay", data={"since": since})
        text = unescape(await asked.text())
        assert re.search(r"re-sends 3 events received since 2000-01-01T00:00", text), text
        assert await states(db, "backend", {"delivered": 3})()
        done = await client.post("/console/destinations/backend/replay", data={"since": since, "confirm": "yes"},
                                 allow_redirects=False)
        assert done.status == 303
        await hook.until(lambda arrivals: sum(a.status == 200 for a in arrivals) == 6, what="the replay sent")
        assert sorted(a.webhook_id for a in hook.arrivals if a.status == 200) == sorted(f"evt_{i}" for i in ids * 2)

        assert await audit(db) == [(ACTOR, "disable", "backend"), (ACTOR, "enable", "backend"),
                                   (ACTOR, "retry", "backend"), (ACTOR, "replay", "backend")]
        shown = await (await client.get("/console/destinations/backend")).text()
        assert shown.count(ACTOR) == 4 and OPERATOR not in shown


async def test_the_retry_button_of_an_event_sends_it_again(operating, db) -> None:
    async with receiver(error(500), secret=SECRET) as hook:
        client = await operating(destination_toml("backend", hook.url, retry_schedule="[0.05]"))
        event_id = await post(client, 1)
        await until(states(db, "backend", {"parked": 1}), "the event parked")
        await sign_in(client)
        page = await (await client.get(f"/console/events/{event_id}")).text()
        assert "parked" in page and 'class="retry"' in page
        hook.behaviour = ok()
        resp = await client.post(f"/console/events/{event_id}/retry", data={"destination": "backend"},
                                 allow_redirects=False)
        assert (resp.status, resp.headers["Location"]) == (303, f"/console/events/{event_id}")
        await until(states(db, "backend", {"delivered": 1}), "delivered after the retry")
        assert [a.status for a in hook.by_id(f"evt_{event_id}")] == [500, 500, 200]
        assert await audit(db) == [(ACTOR, "retry_event", "backend")]
        page = await (await client.get(f"/console/events/{event_id}")).text()
        assert "delivered" in page


async def test_an_unknown_destination_is_404(operating, db) -> None:
    client = await operating(destination_toml("backend", "http://127.0.0.1:9/hook"))
    await sign_in(client)
    assert (await client.get("/console/destinations/nope")).status == 404
    assert (await client.post("/console/destinations/nope/retry", allow_redirects=False)).status == 404
