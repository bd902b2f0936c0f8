"""The database stops mid-test: 503 with Retry-After, never a 2xx or a 500,
and the service recovers by itself when the database is back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest

from codex_ingest import migrations
from codex_ingest.app import create_app
from codex_ingest.settings import Settings
from tests import pg
from tests.helpers import SECRET, headers

URL = "/pos/toast/ingest"


@pytest.fixture
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pg.EmbeddedServer]:
    """A server of this test's own, so stopping it disturbs no other test."""
    server = pg.start_embedded_server(tmp_path_factory.mktemp("outage"))
    try:
        yield server
    finally:
        server.close()


async def test_database_stopped_mid_test_gives_503_then_recovers(aiohttp_client, own_server) -> None:
    url = own_server.url("postgres")
    migrations.apply_all(url)
    settings = Settings(
        webhook_secret=SECRET,
        database_url=url,
        db_pool_min=1,
        db_pool_max=4,
        db_connect_timeout=1.0,
        db_command_timeout=2.0,
        retry_after_seconds=7,
    )
    client = await aiohttp_client(create_app(settings))

    before = b'{"n":"before"}'
    assert (await client.post(URL, data=before, headers=headers(before))).status == 201
    assert (await client.get("/readyz")).status == 200

    own_server.stop("immediate")

    during = [f'{{"n":"during-{i}"}}'.encode() for i in range(5)]
    loop = asyncio.get_running_loop()
    for body in during:
        started = loop.time()
        resp = await client.post(URL, data=body, headers=headers(body))
        assert resp.status == 503, await resp.text()
        assert resp.headers["Retry-After"] == "7"
        assert (await resp.json())["error"] == "database_unavailable"
        assert loop.time() - started < 5, "a request hung past its timeouts"
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await client.get("/healthz")).status == 200
    metrics = await (await client.get("/metrics")).text()
    assert 'codex_ingest_events_total{outcome="unavailable",source="toast"} 5.0' in metrics

    own_server.start()

    # The pool reconnects by itself; no restart of the app.
    deadline = loop.time() + 10
    while True:
        resp = await client.post(URL, data=during[0], headers=headers(during[0]))
        if resp.status == 201 or loop.time() > deadline:
            break
        assert resp.status == 503
        await asyncio.sleep(0.2)
    assert resp.status == 201
    assert (await client.get("/readyz")).status == 200

    conn = await asyncpg.connect(url)
    try:
        bodies = [bytes(r["body"]) for r in await conn.fetch("SELECT body FROM events ORDER BY id")]
    finally:
        await conn.close()
    # Only what was answered 201 is stored: nothing from the outage but the retried one.
    assert bodies == [before, during[0]]
