"""Push delivery across real ``codex-ingest serve`` processes sharing one
database, to real receivers on 127.0.0.1 (in this test's event loop) that
verify every request with the standardwebhooks library.

* Two processes deliver every event, each exactly once (answered 2xx at
  once, nothing is resent), in parallel mode and in ordered mode (per tenant,
  in delivery order, across both processes).
* ``max_per_second`` holds across two processes: no sliding one-second
  window of the receiver's arrival times holds more requests than the bound.
* kill -9 of the whole service mid-delivery, then a restart: every event is
  delivered; those the killed process had in flight are resent with the same
  webhook-id and the same bytes, and nothing else is.
* A sender frozen past its lease (SIGSTOP) is taken over by the other
  process; thawed, it records nothing over the newer 2xx.

Each process gets its own sources file, the same destination under the same
name, with its own path on the one receiver (``/a``, ``/b``): the path a
request arrives on says which process sent it, so each test can check that
both processes really took part.

Every test starts processes, so every wait draws on one budget of
``BUDGET_SECONDS`` per test (each test fails within it rather than hang);
nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from bench.local import free_port
from bench.service import Service
from codex_ingest.delivery.signing import webhook_id as wid
from tests.delivery.receivers import Arrival, Receiver, hang, is_2xx, ok, receiver, script, slow
from tests.helpers import SECRET as INGEST_SECRET
from tests.helpers import headers, until

WHSEC = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of 24 bytes
SOURCE = "orders"
DESTINATION = "backend"
# Every test here starts processes: each of its waits draws on this budget.
BUDGET_SECONDS = 60.0


class Budget:
    """What is left of a test's time, for each wait to take as its timeout."""

    def __init__(self, seconds: float = BUDGET_SECONDS) -> None:
        self._deadline = asyncio.get_running_loop().time() + seconds

    def left(self) -> float:
        return max(0.1, self._deadline - asyncio.get_running_loop().time())


def sources_file(directory: Path, name: str, url: str, **keys: object) -> Path:
    """A sources file with one destination (the generic sources stay on, with WEBHOOK_SECRET)."""
    lines = [f"[destinations.{DESTINATION}]", f'url = "{url}"', f'secrets = ["{WHSEC}"]',
             "allow_private_network = true"]
    for key, value in keys.items():
        lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
    path = directory / f"sources-{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def service(database_url: str, directory: Path, name: str, sources: Path, workers: int = 1) -> Service:
    return Service(database_url, free_port(), INGEST_SECRET, directory / f"serve-{name}.log", workers=workers,
                   env={"CODEX_SOURCES": str(sources), "LOG_LEVEL": "INFO", "DB_POOL_MAX": "6",
                        "SHUTDOWN_GRACE_SECONDS": "1"})


@contextlib.asynccontextmanager
async def running(*services: Service) -> AsyncIterator[tuple[Service, ...]]:
    """The services started at once (each in a process group of its own); stopped
    afterwards, killed with their whole group if they do not stop."""
    try:
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in services))
        yield services
    finally:
        await asyncio.gather(*(asyncio.to_thread(_stop, s) for s in services))


def _stop(s: Service) -> None:
    if s.proc is None or s.proc.poll() is not None:
        s.cleanup()
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(s.proc.pid, signal.SIGCONT)  # a test that froze it
    try:
        s.terminate(timeout=20)
    except Exception:
        pass
    s.cleanup()  # SIGKILL to whatever of its group is left


def log_of(*services: Service) -> str:
    out = []
    for s in services:
        with contextlib.suppress(OSError):
            out.append(f"--- {s.log_path.name}\n" + s.log_path.read_text(errors="replace")[-4000:])
    return "\n".join(out)


async def post_batch(session: aiohttp.ClientSession, s: Service, tenant: str, keys: Iterable[str]) -> list[int]:
    """One signed JSON array of events to ``s`` (one commit); their event ids, in item order."""
    items = [{"id": key, "type": "order.created", "tenant": tenant} for key in keys]
    body = json.dumps(items, separators=(",", ":")).encode()
    async with session.post(f"{s.base_url}/pos/{SOURCE}/ingest/batch", data=body,
                            headers=headers(body, tenant=tenant)) as resp:
        assert resp.status == 200, await resp.text()
        doc = await resp.json()
    assert [r["status"] for r in doc["results"]] == ["accepted"] * len(items), doc
    return [int(r["event_id"]) for r in doc["results"]]


async def post_one(session: aiohttp.ClientSession, s: Service, tenant: str, key: str) -> int:
    body = json.dumps({"type": "order.created", "tenant": tenant, "key": key}).encode()
    async with session.post(f"{s.base_url}/pos/{SOURCE}/ingest", data=body,
                            headers=headers(body, tenant=tenant, **{"Idempotency-Key": key})) as resp:
        assert resp.status == 201, await resp.text()
        return int((await resp.json())["event_id"])


def delivered_2xx(expected: set[str]):
    """A receiver predicate: every webhook-id in ``expected`` was answered 2xx."""
    def check(arrivals: list[Arrival]) -> bool:
        return expected <= {a.webhook_id for a in arrivals if is_2xx(a)}

    return check


def copies(hook: Receiver) -> dict[str | None, list[Arrival]]:
    by_id: dict[str | None, list[Arrival]] = {}
    for arrival in hook.arrivals:
        by_id.setdefault(arrival.webhook_id, []).append(arrival)
    return by_id


def check_copies_alike(hook: Receiver) -> None:
    """Every request verified; every copy of a webhook-id carries the same body, tenant, source and key."""
    assert not hook.unverified(), hook.summary()
    for webhook_id, seen in copies(hook).items():
        assert len({(a.body, a.tenant, a.source, a.idempotency_key) for a in seen}) == 1, \
            f"{webhook_id} came with different bodies or headers: {[a.body for a in seen]}"


def states(db: asyncpg.Connection, expected: dict[str, int]):
    async def check() -> bool:
        rows = await db.fetch("SELECT state, count(*) AS n FROM deliveries WHERE destination = $1 GROUP BY state",
                              DESTINATION)
        return {r["state"]: r["n"] for r in rows} == expected

    return check


# --------------------------------------------------------------------------- two processes, exactly once


@pytest.mark.parametrize("ordered", [False, True], ids=["parallel", "ordered"])
async def test_two_processes_deliver_every_event_exactly_once(db, database_url, tmp_path: Path, ordered: bool) -> None:
    budget = Budget()
    total = 12 * 40 + 12 * 2
    # A little slow, so that each process finds work left when it looks (every second at worst);
    # in ordered mode, more tenants (heads) than either process takes at once.
    async with receiver(slow(0.05), secret=WHSEC) as hook:
        a = service(database_url, tmp_path, "a", sources_file(tmp_path, "a", hook.base_url + "/a",
                                                               ordered=ordered, max_in_flight=4))
        b = service(database_url, tmp_path, "b", sources_file(tmp_path, "b", hook.base_url + "/b",
                                                               ordered=ordered, max_in_flight=4))
        async with running(a, b), aiohttp.ClientSession() as session:
            tenants = [f"shop-{n}" for n in range(12)]
            # Batches (one commit each) and single events, to both processes at once.
            batches = [post_batch(session, s, t, [f"{t}-batch-{k}" for k in range(40)])
                       for s, t in zip(itertools.cycle([a, b]), tenants, strict=False)]
            singles = [post_one(session, s, t, f"{t}-one-{k}")
                       for k, (s, t) in enumerate(zip(itertools.cycle([b, a]), tenants * 2, strict=False))]
            batch_ids, single_ids = await asyncio.gather(asyncio.gather(*batches), asyncio.gather(*singles))
            ids = [i for chunk in batch_ids for i in chunk] + list(single_ids)
            assert len(ids) == len(set(ids)) == total
            expected = {wid(i) for i in ids}
            await hook.until(delivered_2xx(expected), budget.left(), what="every event answered 2xx")
            await until(states(db, {"delivered": total}), "every delivery recorded", budget.left())
            logs = log_of(a, b)
    check_copies_alike(hook)
    assert {x.webhook_id for x in hook.arrivals} == expected, hook.summary()
    # Every request was answered 2xx at once: nothing was ever due again, so no resends at all.
    resent = {w: [x.path for x in seen] for w, seen in copies(hook).items() if len(seen) > 1}
    assert not resent, f"sent more than once though answered 2xx: {resent}\n{logs}"
    assert {x.path for x in hook.arrivals} == {"/a", "/b"}, "both processes should have delivered"
    if ordered:
        order: dict[str, list[int]] = {}
        for row in await db.fetch("SELECT id, tenant_id FROM events ORDER BY xact, id"):
            order.setdefault(row["tenant_id"], []).append(row["id"])
        for tenant, tenant_ids in order.items():
            got = [x for x in hook.arrivals if x.tenant == tenant]
            assert [x.webhook_id for x in got] == [wid(i) for i in tenant_ids], f"{tenant}: {hook.summary()}"
            for before, after in itertools.pairwise(got):
                # Event n+1 is sent only after n was answered 2xx, whichever process sends it.
                assert before.answered_at is not None and before.answered_at <= after.at, \
                    f"{tenant}: {after.webhook_id} ({after.path}) sent before {before.webhook_id} ({before.path}) " \
                    f"was answered: {hook.summary()}"


# --------------------------------------------------------------------------- the throttle


async def test_max_per_second_holds_across_two_processes(db, database_url, tmp_path: Path) -> None:
    budget = Budget()
    limit, total = 5, 30
    async with receiver(ok(), secret=WHSEC) as hook:
        a = service(database_url, tmp_path, "a", sources_file(tmp_path, "a", hook.base_url + "/a",
                                                               max_per_second=limit, max_in_flight=15))
        b = service(database_url, tmp_path, "b", sources_file(tmp_path, "b", hook.base_url + "/b",
                                                               max_per_second=limit, max_in_flight=15))
        async with running(a, b), aiohttp.ClientSession() as session:
            # One commit: all 30 are due at once, more than either process takes (15 in flight each).
            ids = await post_batch(session, a, "shop-a", [f"k-{n}" for n in range(total)])
            expected = {wid(i) for i in ids}
            await hook.until(delivered_2xx(expected), budget.left(), what="all 30 answered 2xx")
            await until(states(db, {"delivered": total}), "every delivery recorded", budget.left())
    check_copies_alike(hook)
    assert {x.webhook_id for x in hook.arrivals} == expected
    assert {x.path for x in hook.arrivals} == {"/a", "/b"}, "both processes should have sent"
    # Every request counts, retries too. A one-second window [t, t + 1) holding limit + 1 arrivals
    # means arrivals i and i + limit less than a second apart.
    times = sorted(x.at for x in hook.arrivals)
    crowded = [(round(times[i + limit] - times[i], 4), i) for i in range(len(times) - limit)
               if times[i + limit] - times[i] < 1.0]
    gaps = [round(times[i + limit] - times[i], 4) for i in range(len(times) - limit)]
    assert not crowded, f"{limit + 1} requests within one second: {crowded}; every gap of {limit}: {gaps}"


# --------------------------------------------------------------------------- kill -9, restart


async def test_kill_9_mid_delivery_then_restart_delivers_every_event(db, database_url, tmp_path: Path) -> None:
    budget = Budget()
    total = 150
    # The same destination before and after the restart, on its own path each time: the path
    # says which life of the service sent a request.
    keys = {"timeout_seconds": 2, "max_in_flight": 8}  # lease: timeout_seconds + 5 s
    async with receiver(slow(0.2), secret=WHSEC) as hook:
        first = service(database_url, tmp_path, "first",
                        sources_file(tmp_path, "first", hook.base_url + "/first", **keys), workers=2)
        async with running(first), aiohttp.ClientSession() as session:
            ids = []
            for k in range(3):
                ids += await post_batch(session, first, f"shop-{k}", [f"k-{k}-{n}" for n in range(total // 3)])
            expected = {wid(i) for i in ids}
            await hook.until(lambda arrivals: len(arrivals) >= 20 and any(x.answer == "pending" for x in arrivals),
                             budget.left(), what="deliveries under way, some in flight")
            # Taken with no await before the kill: these requests are in flight at the receiver,
            # so the killed service cannot have recorded them.
            in_flight = {x.webhook_id for x in hook.arrivals if x.answer == "pending"}
            processes = first.kill9()  # SIGKILL to the supervisor and every worker at once
        assert processes >= 2 and in_flight
        assert len({x.webhook_id for x in hook.arrivals if is_2xx(x)}) < total, \
            "the kill came too late to mean anything"

        def resent(arrivals: list[Arrival]) -> bool:
            # The receiver answered 2xx to requests whose sender was dead by then: what was in
            # flight must come again, from the restarted service.
            again = {x.webhook_id for x in arrivals if x.path == "/second" and is_2xx(x)}
            return delivered_2xx(expected)(arrivals) and in_flight <= again

        second = service(database_url, tmp_path, "second",
                         sources_file(tmp_path, "second", hook.base_url + "/second", **keys), workers=2)
        async with running(second):
            await hook.until(resent, budget.left(), what="every event answered 2xx, and what was in flight resent")
            await until(states(db, {"delivered": total}), "every delivery recorded", budget.left())
    check_copies_alike(hook)
    assert {x.webhook_id for x in hook.arrivals} == expected, hook.summary()
    assert {x.path for x in hook.arrivals} == {"/first", "/second"}
    by_id = copies(hook)
    # What was in flight at the kill is resent with the same webhook-id (and bytes: check_copies_alike).
    for webhook_id in in_flight:
        assert [x.path for x in by_id[webhook_id]] == ["/first", "/second"], (webhook_id, hook.summary())
    # Nothing is sent twice by one life of the service; the restarted one resends only what the
    # killed one had not recorded.
    for webhook_id, seen in by_id.items():
        paths = [x.path for x in seen]
        assert paths in (["/first"], ["/second"], ["/first", "/second"]), (webhook_id, paths)
    recorded_first = {wid(r["event_id"]) for r in await db.fetch(
        "SELECT event_id FROM delivery_attempts WHERE attempt = 1 AND status BETWEEN 200 AND 299")}
    resent_ids = {w for w, seen in by_id.items() if len(seen) == 2}
    assert not recorded_first & resent_ids, f"resent though recorded delivered: {sorted(recorded_first & resent_ids)}"


# --------------------------------------------------------------------------- a stale lease


async def test_a_sender_frozen_past_its_lease_is_taken_over_and_records_nothing_over_the_newer_2xx(
    db, database_url, tmp_path: Path
) -> None:
    budget = Budget()
    # The first request never answers; the next one (the takeover) gets a 2xx.
    async with receiver(script(hang(), then=ok(), per="webhook-id"), secret=WHSEC) as hook:
        keys = {"timeout_seconds": 1, "retry_schedule": "[0.1, 0.1, 0.1]"}  # lease: 1 + 5 s
        a = service(database_url, tmp_path, "a", sources_file(tmp_path, "a", hook.base_url + "/a", **keys))
        b = service(database_url, tmp_path, "b", sources_file(tmp_path, "b", hook.base_url + "/b", **keys))
        async with running(a, b) as services, aiohttp.ClientSession() as session:
            event_id = await post_one(session, a, "shop-a", "k-1")
            first = (await hook.until(lambda arrivals: arrivals, budget.left(), what="the first attempt"))[0]
            assert first.webhook_id == wid(event_id)
            sender = {"/a": a, "/b": b}[first.path]
            other = next(s for s in services if s is not sender)
            assert sender.proc is not None
            os.killpg(sender.proc.pid, signal.SIGSTOP)  # frozen mid-request, its lease running out
            try:
                await hook.until(lambda arrivals: any(is_2xx(x) for x in arrivals), budget.left(),
                                 what="the other process to take the delivery over")
                await until(states(db, {"delivered": 1}), "the takeover's 2xx recorded", budget.left())
            finally:
                os.killpg(sender.proc.pid, signal.SIGCONT)
            # Thawed, the frozen sender finds its request timed out and records that, by its lease:
            # its attempt is logged in the same statement (record_results).
            await until(lambda: db.fetchval("SELECT count(*) = 2 FROM delivery_attempts"),
                        "the thawed sender's attempt logged", budget.left())
            row = await db.fetchrow("SELECT state, last_status, lease_token FROM deliveries")
            attempts = [dict(r) for r in
                        await db.fetch("SELECT attempt, status, error FROM delivery_attempts ORDER BY id")]
            logs = log_of(a, b)
    assert dict(row) == {"state": "delivered", "last_status": 200, "lease_token": None}, (attempts, logs)
    takeover = [x for x in hook.arrivals if is_2xx(x)]
    assert [x.path for x in takeover] == ["/a" if other is a else "/b"], hook.summary()
    assert [x.webhook_id for x in hook.arrivals] == [wid(event_id)] * 2, hook.summary()
    assert sorted((x["status"] is None, x["status"]) for x in attempts) == [(False, 200), (True, None)], attempts
    check_copies_alike(hook)
