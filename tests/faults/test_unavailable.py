"""The database stops mid-test: 503 with Retry-After, never a 2xx or a 500,
no request waits past DB_WRITE_TIMEOUT, and the service recovers by itself
within 5 s of the database being back."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from bench.faults import SignedLoad, status_counts, stored_copies, verdict
from codex_ingest.settings import Settings
from codex_ingest.storage import migrations
from codex_ingest.web.app import create_app
from tests.faults.harness import RECOVERY_BOUND, key_held, resend_settles
from tests.helpers import SECRET, headers, until

# The write path: batched and direct writes must each keep these promises.
pytestmark = pytest.mark.both_write_paths

URL = "/pos/toast/ingest"


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


# -- under load ------------------------------------------------------------------

WRITE_TIMEOUT = 3.0
# Every ingest is answered within DB_WRITE_TIMEOUT; the margin is for a slow machine.
ANSWER_BOUND = WRITE_TIMEOUT + 5.0


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "direct"])
async def test_outage_under_load_is_503_within_bounds_and_recovery_takes_under_5_s(
    aiohttp_client, own_server, batching: bool
) -> None:
    url = own_server.url("postgres")
    migrations.apply_all(url)
    settings = Settings(
        webhook_secret=SECRET,
        database_url=url,
        db_pool_min=2,
        db_pool_max=4,
        db_connect_timeout=1.0,
        db_command_timeout=2.0,
        db_write_timeout=WRITE_TIMEOUT,
        retry_after_seconds=7,
        batching=batching,
    )
    client = await aiohttp_client(create_app(settings))
    load = SignedLoad(str(client.make_url("/pos/chaos/ingest")), secret=SECRET, concurrency=8, pause=0.02, timeout=60)
    stop = asyncio.Event()
    sender = asyncio.create_task(load.run(stop))
    loop = asyncio.get_running_loop()
    try:
        await until(lambda: len(load.acknowledged) >= 40, "acknowledgements before the outage")
        await asyncio.to_thread(own_server.stop, "immediate")
        down = loop.time()
        await until(lambda: any(a.sent >= down for a in load.answers), "an answer to a request sent during the outage")
        readiness_down = (await client.get("/readyz")).status
        starting = loop.time()
        await asyncio.to_thread(own_server.start)
        up = loop.time()  # pg_ctl start -w returned: the database accepts connections
        await until(lambda: any(a.acknowledged and a.sent >= starting for a in load.answers), "recovery", timeout=15)
        # The first 2xx after the restart; it may even come before pg_ctl returns.
        recovered = max(0.0, min(a.answered for a in load.answers if a.acknowledged and a.sent >= starting) - up)
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await sender
    readiness_up = (await client.get("/readyz")).status

    statuses = {a.status for a in load.answers}
    assert statuses <= {201, 503}, status_counts(load.answers)  # never a 500, never a dropped request
    assert all(a.retry_after == "7" for a in load.answers if a.status == 503)
    during = [a for a in load.answers if a.sent >= down and a.answered <= starting]
    assert during and all(a.status == 503 for a in during), status_counts(during)
    slowest = max(a.seconds for a in load.answers)
    assert slowest <= ANSWER_BOUND, f"a request took {slowest:.1f} s"
    assert readiness_down == 503 and readiness_up == 200
    assert recovered <= RECOVERY_BOUND, f"recovered {recovered:.2f} s after the database was back"

    copies = await stored_copies(url, load.tenant)
    result = verdict(load, copies)
    assert result["lost"] == 0 and result["doubled"] == 0 and result["stranger"] == 0, result
    await resend_settles(load, url)


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "direct"])
async def test_a_write_stuck_on_a_lock_is_answered_503_within_db_write_timeout(
    aiohttp_client, own_server, batching: bool
) -> None:
    # DB_COMMAND_TIMEOUT is long on purpose: only DB_WRITE_TIMEOUT bounds the wait.
    url = own_server.url("postgres")
    migrations.apply_all(url)
    settings = Settings(
        webhook_secret=SECRET, database_url=url, db_pool_min=1, db_pool_max=1,
        db_connect_timeout=30.0, db_command_timeout=30.0, db_write_timeout=1.0, batching=batching,
    )
    client = await aiohttp_client(create_app(settings))
    load = SignedLoad(str(client.make_url("/pos/chaos/ingest")), secret=SECRET)
    # Another writer holds event 0's key, uncommitted: our INSERT of it waits on the lock,
    # holding the pool's only connection, so events 1-4 queue behind it.
    async with key_held(url, load, 0) as tx:
        async with load.session() as session:
            answers = await asyncio.gather(*(load.send(session, n) for n in range(5)))
        await tx.rollback()
    assert [a.status for a in answers] == [503] * 5
    assert all(a.seconds <= 1.0 + 4.0 for a in answers), [round(a.seconds, 2) for a in answers]
    await resend_settles(load, url)
