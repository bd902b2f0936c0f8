"""Failover: kill -9 the primary mid-load, promote its standby, keep serving.

A primary and a streaming standby run on this machine (bench/replication.py);
``codex-ingest serve`` is given both in one URL with
``target_session_attrs=read-write`` and is never restarted. Under signed load
the primary's whole process tree gets SIGKILL (a machine dying), and a second
later the standby is promoted with ``pg_ctl promote``. Then: while there is
no primary every answer is a 503 with Retry-After; the service reaches the
new primary by itself; no key is stored twice; resending the unacknowledged
events settles them. With a synchronous standby no acknowledged event is
lost. With an asynchronous one some may be — the WAL the primary had not
sent yet — and the test reports how many (``lost`` in its output and its
junit properties) instead of asserting 0. bench/chaos.py ``--fault failover``
runs the same drill longer.

Two more drills: a switchover in which both servers answer and neither is
writable for a while (503, never 500), and a primary that hangs instead of
dying (storage/pool.py tries every host at once, so the promoted standby is
found without waiting out the hung one).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from bench.chaos import FAILOVER_ENV, first_2xx_after, watchdog
from bench.faults import Answer, SignedLoad, status_counts, stored_copies, verdict
from bench.replication import ReplicaPair
from bench.service import Service
from codex_ingest.storage import migrations
from tests.faults.harness import resend_settles, service_factory
from tests.helpers import SECRET, until

INGEST = "/pos/chaos/ingest"
RECOVERY_BOUND = 30.0  # seconds from the kill to the first 2xx; ~1.3 s here (1 s of it before the promotion)
OUTAGE = 1.0           # seconds without a primary: the kill, then the promotion


@pytest.fixture
def start_pair() -> Iterator[Callable[[bool], ReplicaPair]]:
    pairs: list[ReplicaPair] = []

    def start(synchronous: bool) -> ReplicaPair:
        pair = ReplicaPair.start(synchronous)
        pairs.append(pair)
        # On the multi-host URL, as serve does: yoyo is given the writable host (storage/migrations.yoyo_url).
        assert migrations.apply_all(pair.multi_host_url()) == [s.id for s in migrations.status(pair.primary.url())]
        return pair

    try:
        yield start
    finally:
        for pair in pairs:
            pair.close()


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    with service_factory(tmp_path, **FAILOVER_ENV) as make:
        yield make


@dataclass
class Failover:
    load: SignedLoad
    killed: int          # processes of the primary's tree
    kill_issued: float   # time.monotonic() before the kill
    down: float          # ... once every process of it was gone
    promoting: float     # ... when pg_ctl promote was run
    first_2xx: float     # ... when the first request sent after the kill got a 2xx

    @property
    def recover_seconds(self) -> float:
        return self.first_2xx - self.kill_issued

    @property
    def without_primary(self) -> list[Answer]:
        """Answers to requests sent after the kill and answered before the promotion began."""
        return [a for a in self.load.answers if a.sent >= self.down and a.answered <= self.promoting]


async def failover_under_load(pair: ReplicaPair, service: Service, sync_state: str) -> Failover:
    await asyncio.to_thread(service.start)
    load = SignedLoad(service.base_url + INGEST, secret=SECRET, concurrency=8, timeout=30)
    stop = asyncio.Event()
    sender = asyncio.create_task(load.run(stop))
    guard = asyncio.create_task(watchdog(load, stop, seconds=60, max_requests=200_000))
    try:
        await until(lambda: len(load.acknowledged) >= 150, "acknowledgements before the kill")
        assert await asyncio.to_thread(pair.replication_state) == ("streaming", sync_state)
        kill_issued = time.monotonic()
        killed = await asyncio.to_thread(pair.kill_primary)
        down = time.monotonic()
        await asyncio.sleep(OUTAGE)  # the scenario: this long without a primary ...
        # ... and at least one answer in it, to check.
        await until(lambda: any(a.sent >= down for a in load.answers), "an answer while there is no primary")
        promoting = time.monotonic()
        await asyncio.to_thread(pair.promote)
        await until(lambda: first_2xx_after(load.answers, down) is not None, "a 2xx from the new primary", 40)
        await asyncio.sleep(0.5)  # load on both workers after the recovery
    finally:
        stop.set()
        await sender
        await guard
    first = first_2xx_after(load.answers, down)
    assert first is not None
    return Failover(load, killed, kill_issued, down, promoting, first)


def check_answers(failover: Failover) -> None:
    """503 with Retry-After while there is no primary; never a 500 or a 4xx; recovered in time."""
    answers = failover.load.answers
    assert failover.killed >= 2, "the primary's children were not killed with it"
    assert {a.status for a in answers} <= {201, 503}, status_counts(answers)
    during = failover.without_primary
    assert during and all(a.status == 503 and a.retry_after for a in during), status_counts(during)
    assert failover.recover_seconds <= RECOVERY_BOUND, f"recovered {failover.recover_seconds:.2f} s after the kill"


async def test_failover_to_a_synchronous_standby_loses_and_doubles_nothing(
    start_pair, make_service, record_property
) -> None:
    pair = await asyncio.to_thread(start_pair, True)
    service = make_service(pair.multi_host_url(), 2)
    failover = await failover_under_load(pair, service, "sync")
    check_answers(failover)

    new_primary = pair.standby.url()
    result = verdict(failover.load, await stored_copies(new_primary, failover.load.tenant))
    record_property("recover_seconds", round(failover.recover_seconds, 3))
    record_property("acknowledged", result["acknowledged"])
    record_property("lost", result["lost"])
    print(f"sync failover: recovered {failover.recover_seconds:.2f} s after the kill; {result}")
    assert result["lost"] == 0 and result["doubled"] == 0 and result["stranger"] == 0, result
    await resend_settles(failover.load, new_primary)
    assert await asyncio.to_thread(service.terminate) == 0


async def test_failover_to_an_asynchronous_standby_doubles_nothing_and_reports_what_it_lost(
    start_pair, make_service, record_property
) -> None:
    pair = await asyncio.to_thread(start_pair, False)
    service = make_service(pair.multi_host_url(), 2)
    failover = await failover_under_load(pair, service, "async")
    check_answers(failover)

    load, new_primary = failover.load, pair.standby.url()
    copies = await stored_copies(new_primary, load.tenant)
    result = verdict(load, copies)
    lost = load.acknowledged - copies.keys()
    record_property("recover_seconds", round(failover.recover_seconds, 3))
    record_property("acknowledged", result["acknowledged"])
    record_property("lost", result["lost"])
    print(f"async failover: recovered {failover.recover_seconds:.2f} s after the kill; "
          f"LOST {len(lost)} of {result['acknowledged']} acknowledged; {result}")
    assert result["doubled"] == 0 and result["stranger"] == 0, result

    # The resends settle every unacknowledged event (as resend_settles, less the keys the failover lost:
    # their senders got a 2xx and will not send them again).
    stored_before = set(copies)
    resent = await load.resend(load.unacknowledged)
    assert all(a.status in (200, 201) for a in resent), status_counts(resent)
    assert all(a.status == 200 for a in resent if a.key in stored_before), status_counts(resent)
    after = await stored_copies(new_primary, load.tenant)
    assert set(after) == load.sent_keys - lost and set(after.values()) == {1}
    assert await asyncio.to_thread(service.terminate) == 0


@asynccontextmanager
async def synchronous_pair_under_load(start_pair, make_service) -> AsyncIterator[tuple[ReplicaPair, SignedLoad]]:
    """A synchronous pair, a 1-worker service on its multi-host URL, and signed load that has had
    100 events acknowledged; the load stops when the block ends."""
    pair = await asyncio.to_thread(start_pair, True)
    service = make_service(pair.multi_host_url(), 1)
    await asyncio.to_thread(service.start)
    load = SignedLoad(service.base_url + INGEST, secret=SECRET, concurrency=4, timeout=30)
    stop = asyncio.Event()
    sender = asyncio.create_task(load.run(stop))
    guard = asyncio.create_task(watchdog(load, stop, seconds=60, max_requests=100_000))
    try:
        await until(lambda: len(load.acknowledged) >= 100, "acknowledgements before the fault")
        yield pair, load
    finally:
        stop.set()
        await sender
        await guard


async def test_switchover_while_no_host_is_writable_answers_503(start_pair, make_service) -> None:
    """A planned switchover: the primary is demoted to read-only (still up, still streaming), then the
    standby is promoted. In between both servers answer and neither is writable."""
    async with synchronous_pair_under_load(start_pair, make_service) as (pair, load):
        # A session that predates the demotion: it sees the reload once the postmaster has signalled
        # every session (all at once); from then on each reads it before its next command.
        witness = await asyncpg.connect(pair.primary.url())
        try:
            await asyncio.to_thread(pair.make_primary_read_only)

            async def demoted_everywhere() -> bool:
                return await witness.fetchval("SHOW default_transaction_read_only") == "on"

            await until(demoted_everywhere, "the demotion's reload to reach the primary's sessions")
        finally:
            await witness.close()
        demoted = time.monotonic()
        await asyncio.sleep(OUTAGE)  # the scenario: this long with no writable host ...
        # ... and at least one answer in it, to check.
        await until(lambda: any(a.sent >= demoted for a in load.answers), "an answer while no host is writable")
        promoting = time.monotonic()
        await asyncio.to_thread(pair.promote)
        await until(lambda: first_2xx_after(load.answers, promoting) is not None, "a 2xx from the new primary", 40)
    copies = await stored_copies(pair.standby.url(), load.tenant)
    assert verdict(load, copies)["lost"] == 0 and set(copies.values()) == {1}
    # Sent once every session had the reload: refused, each of them. (Before, one may still have been answered 201.)
    during = [a for a in load.answers if a.sent >= demoted and a.answered <= promoting]
    assert during and all(a.status == 503 and a.retry_after for a in during), status_counts(during)


async def test_failover_from_a_primary_that_stops_answering(start_pair, make_service) -> None:
    """The primary hangs (SIGSTOP to its whole tree) instead of dying; the standby is promoted."""
    async with synchronous_pair_under_load(start_pair, make_service) as (pair, load):
        await asyncio.to_thread(pair.freeze_primary)
        frozen = time.monotonic()
        await asyncio.to_thread(pair.promote)
        await until(lambda: first_2xx_after(load.answers, frozen) is not None, "a 2xx from the new primary", 10)
    assert {a.status for a in load.answers} <= {201, 503}, status_counts(load.answers)
    copies = await stored_copies(pair.standby.url(), load.tenant)
    assert verdict(load, copies)["lost"] == 0 and set(copies.values()) == {1}
