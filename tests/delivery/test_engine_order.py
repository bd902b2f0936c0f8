"""Push delivery's order promises, end to end in one process: events posted to
the real app, delivered by its engine to real receivers on 127.0.0.1 that
verify every request with the standardwebhooks library.

* Ordered mode (``ordered = true``): per tenant, the first 2xx of each event
  comes in delivery order, (xact, id), through failures and retries; event
  n+1 of a tenant is never even sent before event n got its 2xx, while the
  other tenants' events are not held back by it.
* A late commit is never skipped: an event whose insert stalls holding an
  early id (a key held by another writer's open transaction), while an event
  with a later id commits and is delivered, is delivered once it commits.
* Ordered mode's order is (xact, id), not id: an event of an older
  transaction that took a later id goes first.
* Parallel mode: an event that keeps failing does not delay the events behind it.
* A throttled destination whose queue takes longer to drain than a lease
  lasts still sends each event once.
* Every test: every request verifies, and a webhook-id seen twice carries the
  same body (and tenant, source and key) each time. In one process with no
  lease running out, a resend is only ever a retry: one copy at a time, none
  after a 2xx.

Waits are for conditions (the receiver's arrivals, the database's rows),
never for guessed durations, and nothing here asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
import pytest

from codex_ingest.delivery.signing import webhook_id as wid
from codex_ingest.storage.queries import load_queries
from tests.db_faults import hold_key
from tests.delivery import test_engine as engine_tests
from tests.delivery.receivers import (
    Arrival,
    Behaviour,
    Call,
    Outcome,
    Receiver,
    Reply,
    fails_then,
    is_2xx,
    ok,
    receiver,
)
from tests.delivery.test_engine import SECRET, destination_toml, states
from tests.helpers import headers, in_background, until

delivering = engine_tests.delivering  # the fixture: the app with these destinations, its engine running

SOURCE = "orders"
# Retries every 0.1 s, for a minute: an event held failing by a test is still
# being retried (pending, not parked) long after every wait here has ended.
KEEP_RETRYING = "[" + ", ".join(["0.1"] * 600) + "]"


# --------------------------------------------------------------------------- harness


def body_of(tenant: str, key: str) -> bytes:
    return b'{"type":"order.created","tenant":"%s","key":"%s"}' % (tenant.encode(), key.encode())


async def post(client, tenant: str, key: str):
    """POST one event; the aiohttp response (its status is the caller's to check)."""
    body = body_of(tenant, key)
    return await client.post(f"/pos/{SOURCE}/ingest", data=body,
                             headers=headers(body, tenant=tenant, **{"Idempotency-Key": key}))


async def accepted(client, tenant: str, key: str) -> int:
    """POST one event, answered 201; its event id."""
    resp = await post(client, tenant, key)
    assert resp.status == 201, await resp.text()
    return int((await resp.json())["event_id"])


@dataclass
class Gate:
    """Answers 500 to every request whose Idempotency-Key is in ``closed`` (known
    before the event is posted, unlike its webhook-id); the others as ``then``."""

    closed: set[str]
    then: Behaviour = field(default_factory=ok)

    async def __call__(self, call: Call) -> Outcome:
        if call.arrival.idempotency_key in self.closed:
            return Reply(500, {}, b"held failing by the test")
        return await self.then(call)


@dataclass
class Jitter:
    """A small pause before each answer (0-20 ms, from a seeded sequence), so that
    requests overlap and a broken order has room to show; then as ``then``."""

    then: Behaviour
    pauses: itertools.cycle = field(default_factory=lambda: itertools.cycle([0.0, 0.02, 0.005, 0.013, 0.0, 0.008]))

    async def __call__(self, call: Call) -> Outcome:
        await call.pause(next(self.pauses))
        return await self.then(call)


def check_copies(hook: Receiver) -> None:
    """Every request verified; a webhook-id seen more than once carries the same body,
    tenant, source and key each time; and, in one process with no lease running out,
    a copy is only ever a retry: sent after the previous copy was answered, and none
    after a 2xx."""
    assert not hook.unverified(), hook.summary()
    copies: dict[str | None, list[Arrival]] = {}
    for arrival in hook.arrivals:
        copies.setdefault(arrival.webhook_id, []).append(arrival)
    for webhook_id, seen in copies.items():
        assert webhook_id is not None and webhook_id.startswith("evt_"), hook.summary()
        assert len({(a.body, a.tenant, a.source, a.idempotency_key) for a in seen}) == 1, \
            f"{webhook_id} came with different bodies or headers: {[a.body for a in seen]}"
        assert sum(is_2xx(a) for a in seen) <= 1, f"{webhook_id} answered 2xx more than once: {hook.summary()}"
        for before, after in itertools.pairwise(seen):
            assert not is_2xx(before), f"{webhook_id} sent again after its 2xx: {hook.summary()}"
            assert before.answered_at is not None and before.answered_at <= after.at, \
                f"{webhook_id}: copy #{after.order} sent while #{before.order} was still unanswered: {hook.summary()}"


@asynccontextmanager
async def checked_receiver(behaviour: Behaviour) -> AsyncIterator[Receiver]:
    """A receiver whose copies are checked (check_copies) when the block ends
    without an error, every answer settled first."""
    async with receiver(behaviour, secret=SECRET) as hook:
        yield hook
        await hook.until(lambda arrivals: all(a.answer != "pending" for a in arrivals), what="every answer settled")
        check_copies(hook)


async def delivery_order(db: asyncpg.Connection) -> dict[str, list[int]]:
    """Each tenant's event ids in delivery order, (xact, id)."""
    order: dict[str, list[int]] = {}
    for row in await db.fetch("SELECT id, tenant_id FROM events ORDER BY xact, id"):
        order.setdefault(row["tenant_id"], []).append(row["id"])
    return order


def assert_tenant_order(hook: Receiver, tenant: str, expected: list[int]) -> None:
    """The tenant's first 2xx per event came in ``expected`` order, and each event's
    first request arrived only after the one before it had been answered 2xx."""
    oks: list[Arrival] = []
    for arrival in hook.arrivals:  # in arrival order
        if arrival.tenant == tenant and is_2xx(arrival) and arrival.webhook_id not in {a.webhook_id for a in oks}:
            oks.append(arrival)
    assert [a.webhook_id for a in oks] == [wid(i) for i in expected], \
        f"{tenant}: 2xx order differs from (xact, id) order {expected}: {hook.summary()}"
    for delivered, following in zip(oks, expected[1:], strict=False):
        first = hook.by_id(wid(following))[0]
        assert delivered.answered_at is not None and delivered.answered_at <= first.at, (
            f"{tenant}: {first.webhook_id} (#{first.order}) was sent before {delivered.webhook_id} got its 2xx "
            f"(#{delivered.order}): {hook.summary()}")


# --------------------------------------------------------------------------- ordered mode


async def test_ordered_each_tenant_gets_its_events_in_delivery_order_through_failures_and_retries(
    delivering, db
) -> None:
    # Every event fails once, then gets a 2xx: each tenant's head is retried before anything
    # behind it may go, while the other tenants' heads are in flight too.
    async with checked_receiver(Jitter(fails_then(1, per="webhook-id"))) as hook:
        client = await delivering(destination_toml("backend", hook.url, ordered=True, max_in_flight=8,
                                                   retry_schedule="[0.05, 0.05, 0.05]"))
        tenants = ["shop-a", "shop-b", "shop-c"]
        for n in range(8):
            # One event of each tenant at once (they may share a micro-batch), round after round.
            answers = await asyncio.gather(*(post(client, t, f"{t}-{n}") for t in tenants))
            assert {r.status for r in answers} == {201}
        await until(states(db, "backend", {"delivered": 24}), "every event delivered")
        order = await delivery_order(db)
        assert sorted(order) == tenants and all(len(ids) == 8 for ids in order.values()), order
        for tenant in tenants:
            assert_tenant_order(hook, tenant, order[tenant])
        # Each event failed once, and was then retried: the order held through the retries.
        for ids in order.values():
            for event_id in ids:
                assert [a.status for a in hook.by_id(wid(event_id))] == [500, 200], hook.summary()


async def test_ordered_a_failing_head_holds_back_its_own_tenant_and_no_other(delivering, db) -> None:
    # shop-held's first event fails until the test lets it through; it is retried all along.
    gate = Gate({"held-0"})
    async with checked_receiver(Jitter(gate)) as hook:
        client = await delivering(destination_toml("backend", hook.url, ordered=True, retry_schedule=KEEP_RETRYING))
        held = [await accepted(client, "shop-held", "held-0")]
        others: dict[str, list[int]] = {"shop-a": [], "shop-b": []}
        for n in range(6):
            for tenant, ids in others.items():
                ids.append(await accepted(client, tenant, f"{tenant}-{n}"))
            if n % 2 == 0:
                held.append(await accepted(client, "shop-held", f"held-{n + 1}"))

        # Every other tenant's events arrive while shop-held's head is still failing and retried.
        wanted = {wid(i) for ids in others.values() for i in ids}
        await hook.until(lambda arrivals: wanted <= {a.webhook_id for a in arrivals if is_2xx(a)},
                         what="every event of shop-a and shop-b answered 2xx")
        await hook.until(lambda arrivals: len([a for a in arrivals if a.webhook_id == wid(held[0])]) >= 2,
                         what="shop-held's head retried")
        head = await db.fetchrow("SELECT state, attempts FROM deliveries WHERE event_id = $1", held[0])
        assert head["state"] == "pending", "the head must still be being retried for this test to mean anything"
        # Nothing of shop-held behind its head was sent: not before the head's 2xx.
        assert not [a for a in hook.arrivals if a.webhook_id in {wid(i) for i in held[1:]}], hook.summary()
        assert not any(is_2xx(a) for a in hook.by_id(wid(held[0]))), hook.summary()

        gate.closed.clear()  # the head's next retry gets a 2xx; the rest of shop-held follows
        await until(states(db, "backend", {"delivered": len(held) + 12}), "every event delivered")
        order = await delivery_order(db)
        assert order["shop-held"] == held
        for tenant in ("shop-held", "shop-a", "shop-b"):
            assert_tenant_order(hook, tenant, order[tenant])


async def test_ordered_delivery_order_is_transaction_then_id_not_id(delivering, db, database_url) -> None:
    """An event of an older transaction that took its id last is due first: once that
    transaction commits, every event is pending at once, and the tenant's head is the
    oldest transaction's event, whatever its id."""
    tenant = "shop-a"
    async with checked_receiver(Jitter(ok())) as hook:
        client = await delivering(destination_toml("backend", hook.url, ordered=True))
        early = await asyncpg.connect(database_url)
        try:
            await early.execute("BEGIN")
            await early.fetchval("SELECT pg_current_xact_id()")  # the oldest transaction: the horizon stops here
            later = [await accepted(client, tenant, f"k-{n}") for n in range(4)]  # committed, held back
            body = body_of(tenant, "k-early")
            row = await early.fetchrow(
                load_queries().sql("insert_event"),
                tenant, SOURCE, "k-early", hashlib.sha256(body).digest(), body, "application/json", None,
                # $1 tenant, $2 source, $3 key, $4 sha256, $5 body, $6 content type, $7 headers
            )
            await early.execute("COMMIT")
        finally:
            await early.close()
        early_id = int(row["id"])
        assert early_id > max(later), "the early transaction's event must take the last id for this test to bite"
        await until(states(db, "backend", {"delivered": 5}), "every event delivered")
        order = (await delivery_order(db))[tenant]
        assert order == [early_id, *later]
        assert_tenant_order(hook, tenant, order)


# --------------------------------------------------------------------------- a late commit


@pytest.mark.both_write_paths
@pytest.mark.parametrize("ordered", [False, True], ids=["parallel", "ordered"])
async def test_an_event_that_commits_late_is_delivered_once(delivering, db, database_url, ordered: bool) -> None:
    """The stalled insert holds an early id (and transaction id) while another event,
    with a later id but an older transaction, commits and is delivered. When the stall
    ends, the stalled event is delivered too, once, and so are the events that committed
    during the stall. A scheduler that moved its position by id alone (``id >``) would
    skip the stalled event; one that looked past the horizon (pg_snapshot_xmin) would
    skip it too, having moved past the events committed meanwhile."""
    tenant = "shop-a"
    async with checked_receiver(ok()) as hook:
        # Two batches in flight: one may stall on the held key while the other commits the rest.
        client = await delivering(destination_toml("backend", hook.url, ordered=ordered), batch_max_in_flight=2)
        early = await asyncpg.connect(database_url)
        try:
            # Another writer's transaction takes its transaction id now, and writes its event last.
            await early.execute("BEGIN")
            await early.fetchval("SELECT pg_current_xact_id()")
            async with (hold_key(database_url, tenant=tenant, source=SOURCE, key="k-stalled",
                                 body=body_of(tenant, "k-stalled")) as held,
                        in_background(post(client, tenant, "k-stalled")) as stalled):
                await held.until_blocked()  # the service's insert of k-stalled holds an id and waits
                during = [await accepted(client, tenant, f"k-during-{n}") for n in range(3)]
                body = body_of(tenant, "k-early")
                row = await early.fetchrow(
                    load_queries().sql("insert_event"),
                    tenant, SOURCE, "k-early", hashlib.sha256(body).digest(), body, "application/json", None,
                    # $1 tenant, $2 source, $3 key, $4 sha256, $5 body, $6 content type, $7 headers
                )
                await early.execute("COMMIT")
                early_id = int(row["id"])
                # The early transaction's event is delivered while the insert is still stalled.
                await hook.until(lambda arrivals: any(a.webhook_id == wid(early_id) and is_2xx(a) for a in arrivals),
                                 what="the early transaction's event delivered during the stall")
                # The events committed during the stall are behind the stalled transaction (the
                # horizon): none of them was sent yet, whatever the timing.
                assert hook.ids() == [wid(early_id)], hook.summary()
                await held.rollback()  # the held row goes; the stalled insert now commits
                resp = await asyncio.wait_for(stalled, 30)
                assert resp.status == 201, await resp.text()
                stalled_id = int((await resp.json())["event_id"])
        finally:
            await early.close()

        ids = {r["idempotency_key"]: (r["id"], r["xact"]) for r in
               await db.fetch("SELECT id, xact::text::numeric AS xact, idempotency_key FROM events")}
        assert ids["k-stalled"][0] == stalled_id
        # For this test to bite: the stalled event has a lower id than one delivered before it
        # committed, and a newer transaction.
        assert stalled_id < early_id and ids["k-stalled"][1] > ids["k-early"][1], ids
        await until(states(db, "backend", {"delivered": 5}), "every event delivered")
        expected = {wid(i) for i in (early_id, stalled_id, *during)}
        assert Counter(hook.verified_ids()) == Counter(expected), hook.summary()  # each exactly once
        if ordered:
            assert_tenant_order(hook, tenant, (await delivery_order(db))[tenant])


# --------------------------------------------------------------------------- parallel mode


async def test_parallel_an_event_that_keeps_failing_does_not_delay_the_events_behind_it(delivering, db) -> None:
    gate = Gate({"k-failing"})
    async with checked_receiver(Jitter(gate)) as hook:
        client = await delivering(destination_toml("backend", hook.url, retry_schedule=KEEP_RETRYING))
        failing = await accepted(client, "shop-a", "k-failing")
        behind = [await accepted(client, "shop-a", f"k-{n}") for n in range(20)]

        wanted = {wid(i) for i in behind}
        await hook.until(lambda arrivals: wanted <= {a.webhook_id for a in arrivals if is_2xx(a)},
                         what="every event behind the failing one answered 2xx")
        # They all arrived while the failing event is still being retried, never answered 2xx.
        row = await db.fetchrow("SELECT state, attempts FROM deliveries WHERE event_id = $1", failing)
        assert row["state"] == "pending" and row["attempts"] >= 1, dict(row)
        assert hook.by_id(wid(failing)) and not any(is_2xx(a) for a in hook.by_id(wid(failing))), hook.summary()
        await hook.until(lambda arrivals: len([a for a in arrivals if a.webhook_id == wid(failing)]) >= 3,
                         what="the failing event retried")
        # Each event behind it was sent once: nothing waited on the failing one's retries.
        assert all(len(hook.by_id(w)) == 1 for w in wanted), hook.summary()

        gate.closed.clear()
        await until(states(db, "backend", {"delivered": 21}), "the failing event delivered at last")


# --------------------------------------------------------------------------- a throttle slower than a lease


async def test_a_throttle_slower_than_the_lease_still_sends_each_event_once(delivering, db) -> None:
    """14 events claimed at once, one sent a second: the last waits about 13 s for its
    throttle slot, longer than a lease lasts (timeout_seconds + 5 s = 6 s). Every event
    is still sent exactly once: a row waiting for its slot is not taken again and sent twice."""
    async with checked_receiver(ok()) as hook:
        client = await delivering(destination_toml("backend", hook.url, max_per_second=1, timeout_seconds=1,
                                                   max_in_flight=16))
        ids = [await accepted(client, "shop-a", f"k-{n}") for n in range(14)]
        await until(states(db, "backend", {"delivered": 14}), "every event delivered", timeout=60)
        await hook.until(lambda arrivals: all(a.answer != "pending" for a in arrivals), what="every answer settled")
        assert Counter(hook.ids()) == Counter(wid(i) for i in ids), hook.summary()  # each exactly once
