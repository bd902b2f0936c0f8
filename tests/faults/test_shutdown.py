"""Graceful shutdown and disconnecting clients.

SIGTERM: listening stops, requests and batches in flight finish within
SHUTDOWN_GRACE_SECONDS and are answered, the pool closes, exit 0; never a
2xx for an event that did not commit, never a committed event left
unanswered while the grace allowed. A client that disconnects while its
event is being written does not cancel the write: the event is stored once,
and the resend is answered 200 with its id.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bench.faults import SignedLoad, status_counts, stored_copies, verdict
from bench.service import Service, listeners
from codex_ingest.settings import Settings
from codex_ingest.web.app import create_app
from codex_ingest.web.connection import ServiceRunner
from codex_ingest.web.server import make_runner
from tests.faults.harness import key_held, service_factory
from tests.helpers import SECRET, until

# The write path: batched and direct writes must each keep these promises.
pytestmark = pytest.mark.both_write_paths

INGEST = "/pos/chaos/ingest"


@pytest.fixture
def make_service(tmp_path: Path, database_url: str) -> Iterator[Callable[..., Service]]:
    with service_factory(tmp_path, LOG_LEVEL="INFO") as make:
        yield functools.partial(make, database_url)


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_under_load_answers_every_commit_and_exits_0(
    make_service, database_url: str, workers: int
) -> None:
    # A batch delay keeps batches gathering at any moment, so SIGTERM meets some.
    service = make_service(workers, BATCH_MAX_DELAY_MS="20", SHUTDOWN_GRACE_SECONDS="10")
    await asyncio.to_thread(service.start)
    load = SignedLoad(service.base_url + INGEST, secret=SECRET, concurrency=16, timeout=60)
    stop = asyncio.Event()
    sender = asyncio.create_task(load.run(stop))
    try:
        await until(lambda: len(load.acknowledged) >= 150, "acknowledgements before SIGTERM")
        sigterm = time.monotonic()
        code = await asyncio.to_thread(service.terminate)
        took = time.monotonic() - sigterm
    finally:
        stop.set()
        await sender
    assert code == 0
    assert took < 10 + 10, f"shutdown took {took:.1f} s"
    assert {a.status for a in load.answers} <= {0, 201, 503}, status_counts(load.answers)
    result = verdict(load, await stored_copies(database_url, load.tenant))
    assert result["lost"] == 0 and result["doubled"] == 0 and result["stranger"] == 0, result
    # Every event that committed was answered: nothing stored is unacknowledged.
    assert result["stored_unacknowledged"] == 0, result
    log = service.log_path.read_text()
    assert log.count('"msg":"stopped"') == workers


async def test_sigterm_waits_for_a_write_in_flight_answers_it_and_refuses_new_connections(
    make_service, database_url: str
) -> None:
    service = make_service(2, SHUTDOWN_GRACE_SECONDS="30")
    await asyncio.to_thread(service.start)
    load = SignedLoad(service.base_url + INGEST, secret=SECRET, timeout=60)
    async with key_held(database_url, load, 0) as held, load.session() as session:
        in_flight = asyncio.create_task(load.send(session, 0))
        assert await held.until_blocked() == ["codex-ingest"]
        stopping = asyncio.create_task(asyncio.to_thread(service.terminate))
        # listeners() reads /proc: in a thread.
        await until(lambda: asyncio.to_thread(lambda: listeners(service.port) == 0), "the listening sockets to close")
        async with load.session() as fresh:
            refused = await load.send(fresh, 1)
        assert refused.status == 0, refused  # no longer accepting
        # Shutting down, and waiting for the write: still blocked on the held key, neither cancelled nor answered.
        assert await held.waiters() == ["codex-ingest"]
        assert not stopping.done() and not in_flight.done()
        await held.rollback()  # the held key is free: the service's INSERT goes through
        answer = await in_flight
    assert answer.status == 201
    assert await stopping == 0
    assert await stored_copies(database_url, load.tenant) == {load.key(0): 1}


async def test_sigterm_past_the_grace_cancels_the_write_and_never_acknowledges_it(
    make_service, database_url: str
) -> None:
    service = make_service(1, SHUTDOWN_GRACE_SECONDS="1", DB_WRITE_TIMEOUT="3")
    await asyncio.to_thread(service.start)
    load = SignedLoad(service.base_url + INGEST, secret=SECRET, timeout=60)
    async with key_held(database_url, load, 0) as held, load.session() as session:
        in_flight = asyncio.create_task(load.send(session, 0))
        assert await held.until_blocked() == ["codex-ingest"]
        began = time.monotonic()
        code = await asyncio.to_thread(service.terminate)
        took = time.monotonic() - began
        answer = await in_flight
        await held.rollback()  # only now, after the service is gone
    assert code == 0
    # Grace (1 s, then aiohttp cancels and waits up to 1 s more), the batch's DB_WRITE_TIMEOUT (3 s),
    # the pool's close; plus a margin for a slow machine.
    assert took < 1 + 1 + 3 + 5 + 10, f"shutdown took {took:.1f} s"
    assert not answer.acknowledged, answer
    assert await stored_copies(database_url, load.tenant) == {}


# -- a client that disconnects mid-write -------------------------------------------


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "direct"])
@pytest.mark.parametrize("cancellation", [False, True], ids=["as-served", "handler_cancellation-on"])
async def test_a_client_that_disconnects_mid_write_has_its_event_stored_once(
    database_url: str, batching: bool, cancellation: bool
) -> None:
    # DB_WRITE_TIMEOUT out of reach: nothing but the disconnect could end the write while it waits.
    settings = Settings(webhook_secret=SECRET, database_url=database_url, db_pool_min=1, db_pool_max=4,
                        db_write_timeout=120.0, batching=batching)
    app = create_app(settings)
    # As served: make_runner, exactly as `serve` builds it (handler_cancellation off).
    # handler_cancellation on (aiohttp's test server, or someone turning it on): the
    # handler is cancelled on disconnect, and the writers' shielding must still finish the write.
    runner = ServiceRunner(app, handler_cancellation=True) if cancellation else make_runner(app, settings)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    load = SignedLoad(f"http://127.0.0.1:{port}{INGEST}", secret=SECRET)
    try:
        async with key_held(database_url, load, 0) as held:
            body, headers = load.request(0)
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(f"POST {INGEST} HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
            assert await held.until_blocked() == ["codex-ingest"]
            writer.transport.abort()  # the client goes away while its INSERT waits on the lock
            # The server has seen it (connection_lost: and, with handler_cancellation on, cancelled the handler).
            await until(lambda: all(c.transport is None for c in runner.server.connections),
                        "the server to see the client gone")
            # Then a chance for a cancelled write to leave the lock, not a wait for a condition: a write
            # that survives its client stays blocked however slow the machine.
            await asyncio.sleep(0.3)
            assert await held.waiters() == ["codex-ingest"]  # the write was not cancelled with it
            await held.rollback()
        await until(lambda: stored_copies(database_url, load.tenant), "the write to commit")
        assert await stored_copies(database_url, load.tenant) == {load.key(0): 1}
        async with aiohttp.ClientSession() as session:
            async with session.post(load.url, data=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                assert resp.headers["Idempotent-Replayed"] == "true"
    finally:
        await runner.cleanup()
