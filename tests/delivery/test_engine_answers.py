"""How the delivery engine acts on each kind of answer, end to end: events
posted to the real app, delivered by its engine to real receivers on
127.0.0.1 that verify every request with the standardwebhooks library.

Proven here: a redirect is a failure, retried then parked, and never followed
(its target receives nothing); a 429 or a 503 with Retry-After delays the
retry by that much, not by the (much shorter) schedule; a connection reset
and a hang past timeout_seconds are attempts without a status, their error
recorded, retried and then delivered; an answer slower than usual but within
timeout_seconds is delivered on the first attempt. Waits are for conditions,
never for durations, and no time is bounded from above."""

from __future__ import annotations

import asyncpg
import pytest

from tests.delivery import test_engine as engine_tests
from tests.delivery.receivers import (
    fails_then,
    hang,
    ok,
    receiver,
    redirect,
    reset,
    slow,
    too_many_requests,
    unavailable,
)
from tests.delivery.test_engine import SECRET, destination_toml, post, states
from tests.helpers import until

# test_engine's fixture (the app with its engine, for given destinations), found by pytest under this name.
delivering = engine_tests.delivering

# The Retry-After sent: well above both the retry schedule's first step (0.05 s) and the sender's
# idle poll (engine.IDLE_POLL_SECONDS, 1 s), so a retry that ignored it would come about a second
# after the first attempt, and the lower bound below fails.
RETRY_AFTER = 2
RETRY_AFTER_FLOOR = RETRY_AFTER - 0.1


async def test_a_302_is_a_failure_retried_then_parked_and_never_followed(delivering, db) -> None:
    async with receiver(ok(), secret=SECRET) as target, receiver(redirect(target.url), secret=SECRET) as hook:
        client = await delivering(destination_toml("backend", hook.url, retry_schedule="[0.05]"))
        event_id = await post(client, 1)
        await until(states(db, "backend", {"parked": 1}), "the redirected event parked after its one retry")
        rows = await until(_attempt_rows(db, "backend", 2), "both attempts logged")
        assert [(r["attempt"], r["status"], r["error"]) for r in rows] == [(1, 302, "HTTP 302"), (2, 302, "HTTP 302")]
        assert [a.status for a in hook.arrivals] == [302, 302]
        assert hook.verified_ids() == [f"evt_{event_id}"] * 2
        # The Location was never requested: not by the engine, not by its HTTP client.
        assert target.arrivals == [], target.summary()
        last = await db.fetchrow("SELECT last_status, last_error FROM deliveries WHERE destination = 'backend'")
        assert (last["last_status"], last["last_error"]) == (302, "HTTP 302")


@pytest.mark.parametrize("failure", [too_many_requests(RETRY_AFTER), unavailable(RETRY_AFTER)],
                         ids=["429", "503"])
async def test_retry_after_is_honoured_over_a_shorter_schedule(delivering, db, failure) -> None:
    status = failure.status
    async with receiver(fails_then(1, failure=failure), secret=SECRET) as hook:
        client = await delivering(destination_toml("backend", hook.url, retry_schedule="[0.05, 30]"))
        event_id = await post(client, 1)
        await until(states(db, "backend", {"delivered": 1}), f"the event delivered after its {status}")
        rows = await until(_attempt_rows(db, "backend", 2), "both attempts logged")
        assert [(r["attempt"], r["status"]) for r in rows] == [(1, status), (2, 200)]
        first, second = hook.arrivals
        assert (first.status, second.status) == (status, 200)
        assert hook.verified_ids() == [f"evt_{event_id}"] * 2
        gap = second.at - first.at
        assert gap >= RETRY_AFTER_FLOOR, f"retried {gap:.3f} s after a Retry-After of {RETRY_AFTER} s"


async def test_a_connection_reset_is_an_attempt_without_status_then_delivered(delivering, db) -> None:
    async with receiver(fails_then(1, failure=reset()), secret=SECRET) as hook:
        client = await delivering(destination_toml("backend", hook.url, retry_schedule="[0.05]"))
        event_id = await post(client, 1)
        await until(states(db, "backend", {"delivered": 1}), "the event delivered after the reset")
        rows = await until(_attempt_rows(db, "backend", 2), "both attempts logged")
        assert [r["attempt"] for r in rows] == [1, 2]
        assert rows[0]["status"] is None
        assert rows[0]["error"], rows[0]
        assert rows[0]["response_excerpt"] is None
        assert (rows[1]["status"], rows[1]["error"]) == (200, None)
        assert [a.answer for a in hook.arrivals] == ["reset", "replied"]
        assert hook.verified_ids() == [f"evt_{event_id}"] * 2


async def test_a_hang_past_the_timeout_is_no_answer_then_delivered(delivering, db) -> None:
    async with receiver(fails_then(1, failure=hang()), secret=SECRET) as hook:
        client = await delivering(destination_toml("backend", hook.url, timeout_seconds=1, retry_schedule="[0.05]"))
        event_id = await post(client, 1)
        await until(states(db, "backend", {"delivered": 1}), "the event delivered after the hang")
        rows = await until(_attempt_rows(db, "backend", 2), "both attempts logged")
        assert [(r["attempt"], r["status"], r["error"]) for r in rows] == [
            (1, None, "no answer within 1 s"), (2, 200, None)]
        # The first attempt was given up at the timeout, not before it.
        assert rows[0]["duration_ms"] >= 900, rows[0]["duration_ms"]
        assert [a.status for a in hook.arrivals] == [None, 200]  # the first was never answered
        assert hook.verified_ids() == [f"evt_{event_id}"] * 2


async def test_a_slow_answer_within_the_timeout_is_delivered_at_once(delivering, db) -> None:
    async with receiver(slow(0.3), secret=SECRET) as hook:
        client = await delivering(destination_toml("backend", hook.url, timeout_seconds=5, retry_schedule="[0.05]"))
        event_id = await post(client, 1)
        await until(states(db, "backend", {"delivered": 1}), "the slow answer recorded as delivered")
        rows = await until(_attempt_rows(db, "backend", 1), "the attempt logged")
        assert [(r["attempt"], r["status"], r["error"]) for r in rows] == [(1, 200, None)]
        assert rows[0]["duration_ms"] >= 250, rows[0]["duration_ms"]  # it did wait for the slow answer
        assert await db.fetchval("SELECT attempts FROM deliveries WHERE destination = 'backend'") == 1
        await hook.wait_for(1, settled=True)
        assert hook.statuses() == [200]
        assert hook.verified_ids() == [f"evt_{event_id}"]


def _attempt_rows(db: asyncpg.Connection, destination: str, count: int):
    """At least ``count`` rows of delivery_attempts for ``destination``, in order (the row is
    written just after the delivery's state, so it is waited for on its own)."""

    async def check() -> list[asyncpg.Record] | None:
        rows = await db.fetch("SELECT attempt, status, error, duration_ms, response_excerpt FROM delivery_attempts"
                              " WHERE destination = $1 ORDER BY id", destination)
        return rows if len(rows) >= count else None

    return check
