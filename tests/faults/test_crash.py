"""Crash consistency: kill -9 the whole service, or the database, mid-load.

Signed load runs against a real ``codex-ingest serve`` subprocess while the
harness (bench/faults.py) records every key that got a 2xx. After the
crash and a restart: every acknowledged key is stored, none twice, and
resending the unacknowledged ones gets a 2xx and no second row.
bench/chaos.py runs the same scenarios longer and repeatedly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.faults import SignedLoad, status_counts, stored_copies, verdict
from bench.service import Service
from codex_ingest.storage import migrations
from tests import pg
from tests.faults.harness import RECOVERY_BOUND, resend_settles, service_factory
from tests.helpers import SECRET, until

INGEST = "/pos/chaos/ingest"
# Short timeouts so an outage answers 503 quickly; generous enough for a busy machine.
FAST_FAILURE = {"DB_CONNECT_TIMEOUT": "2", "DB_COMMAND_TIMEOUT": "3", "DB_WRITE_TIMEOUT": "5", "LOG_LEVEL": "WARNING"}


@pytest.fixture(scope="module")
def crash_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pg.EmbeddedServer]:
    """A server of this module's own: one test kills it."""
    server = pg.start_embedded_server(tmp_path_factory.mktemp("crash"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def crash_db(crash_server: pg.EmbeddedServer) -> Iterator[str]:
    name, url = pg.create_database(crash_server.admin_url)
    migrations.apply_all(url)
    yield url
    pg.drop_database(crash_server.admin_url, name)


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    with service_factory(tmp_path, **FAST_FAILURE) as make:
        yield make


@pytest.mark.parametrize("workers", [1, 2])
async def test_kill_9_of_the_whole_service_mid_load_loses_and_doubles_nothing(
    crash_db: str, make_service, workers: int
) -> None:
    service = make_service(crash_db, workers)
    await asyncio.to_thread(service.start)
    load = SignedLoad(service.base_url + INGEST, secret=SECRET, concurrency=16, timeout=30)
    stop = asyncio.Event()
    sender = asyncio.create_task(load.run(stop))
    try:
        await until(lambda: len(load.acknowledged) >= 150, "acknowledgements before the kill")
        killed = await asyncio.to_thread(service.kill9)
        # The load keeps knocking on a dead port: requests cut off by the kill, or refused after it.
        await until(lambda: any(a.status == 0 for a in load.answers), "a request cut off or refused by the kill")
    finally:
        stop.set()
        await sender
    assert killed >= (1 if workers == 1 else workers + 1)  # the supervisor and every worker
    assert {a.status for a in load.answers} <= {0, 201}, status_counts(load.answers)

    await asyncio.to_thread(service.start)
    result = verdict(load, await stored_copies(crash_db, load.tenant))
    assert result["lost"] == 0 and result["doubled"] == 0 and result["stranger"] == 0, result
    load.url = service.base_url + INGEST
    await resend_settles(load, crash_db)
    assert await asyncio.to_thread(service.terminate) == 0


async def test_database_killed_mid_load_loses_and_doubles_nothing_and_recovers(
    crash_server: pg.EmbeddedServer, crash_db: str, make_service
) -> None:
    service = make_service(crash_db, 2)
    await asyncio.to_thread(service.start)
    load = SignedLoad(service.base_url + INGEST, secret=SECRET, concurrency=8, timeout=30)
    stop = asyncio.Event()
    sender = asyncio.create_task(load.run(stop))
    loop = asyncio.get_running_loop()
    try:
        await until(lambda: len(load.acknowledged) >= 150, "acknowledgements before the kill")
        await asyncio.to_thread(crash_server.stop, "immediate")
        down = loop.time()
        await until(lambda: any(a.sent >= down for a in load.answers), "an answer to a request sent during the outage")
        starting = loop.time()
        await asyncio.to_thread(crash_server.start)
        up = loop.time()
        await until(lambda: any(a.acknowledged and a.sent >= starting for a in load.answers), "recovery", 20)
        recovered = max(0.0, min(a.answered for a in load.answers if a.acknowledged and a.sent >= starting) - up)
        await asyncio.sleep(0.5)  # load on both workers after the recovery
    finally:
        stop.set()
        await sender
    assert {a.status for a in load.answers} <= {201, 503}, status_counts(load.answers)
    during = [a for a in load.answers if a.sent >= down and a.answered <= starting]
    assert during and all(a.status == 503 and a.retry_after for a in during), status_counts(during)
    assert recovered <= RECOVERY_BOUND, f"recovered {recovered:.2f} s after the database was back"

    result = verdict(load, await stored_copies(crash_db, load.tenant))
    assert result["lost"] == 0 and result["doubled"] == 0 and result["stranger"] == 0, result
    await resend_settles(load, crash_db)
    assert await asyncio.to_thread(service.terminate) == 0
