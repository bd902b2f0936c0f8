"""What the database says is answered by one rule, batched and direct alike
(storage/dberrors.py): a 4xx only for the event's own values (class 22), a
503 with Retry-After for every state of the server that can pass and for
misconfigurations an operator fixes, a 500 for anything else.

Each SQLSTATE is raised for real by PostgreSQL, from a trigger on the
service's own INSERT; once the trigger is gone, the sender's retry is
stored exactly once.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.db_faults import sqlstate_fault
from tests.helpers import headers, stored

# The write path: batched and direct writes must each keep these promises.
pytestmark = pytest.mark.both_write_paths

URL = "/pos/toast/ingest"

# SQLSTATE -> (status, error code). Comments name what each stands for.
RULE = {
    "22001": (400, "event_rejected"),        # string data right truncation: the event's own value
    "22P02": (400, "event_rejected"),        # invalid text representation
    "25006": (503, "database_unavailable"),  # read-only transaction: a demoted primary, a standby
    "42501": (503, "database_unavailable"),  # permission denied: a grant missing after a deploy
    "42P01": (503, "database_unavailable"),  # undefined table: migrations not applied
    "26000": (503, "database_unavailable"),  # prepared statement gone: PgBouncer without DB_STATEMENT_CACHE_SIZE=0
    "XX000": (503, "database_unavailable"),  # internal error
    "XX001": (503, "database_unavailable"),  # data corrupted
    "53100": (503, "database_unavailable"),  # disk full
    "53200": (503, "database_unavailable"),  # out of memory
    "53300": (503, "database_unavailable"),  # too many connections
    "40001": (503, "database_unavailable"),  # serialization failure
    "40P01": (503, "database_unavailable"),  # deadlock detected
    "55P03": (503, "database_unavailable"),  # lock not available
    "57014": (503, "database_unavailable"),  # query canceled
    "57P01": (503, "database_unavailable"),  # admin shutdown
    "58030": (503, "database_unavailable"),  # I/O error
    "08006": (503, "database_unavailable"),  # connection failure
    "P0001": (500, "internal_error"),        # raised by a function: a bug of ours or a trigger's
    "23514": (500, "internal_error"),        # check violation: the service built a bad row
    "42601": (500, "internal_error"),        # syntax error: a bug in our SQL
}


async def db_errors_total(client) -> dict[str, float]:
    text = await (await client.get("/metrics")).text()
    return {
        s.labels["class"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "codex_ingest_db_errors_total"
    }


@pytest.mark.parametrize("sqlstate", sorted(RULE))
async def test_each_sqlstate_is_answered_by_the_rule_and_the_retry_is_stored_once(client, db, sqlstate) -> None:
    status, code = RULE[sqlstate]
    body = b'{"guid":"order-1","eventType":"ORDER_UPDATED"}'
    async with sqlstate_fault(db, sqlstate):
        resp = await client.post(URL, data=body, headers=headers(body))
        assert resp.status == status, await resp.text()
        assert (await resp.json())["error"] == code
        if status == 503:
            assert resp.headers["Retry-After"] == "5"
        else:
            assert "Retry-After" not in resp.headers
        assert await stored(db) == []
        assert (await db_errors_total(client)).get(sqlstate[:2], 0) >= 1

    retry = await client.post(URL, data=body, headers=headers(body))
    assert retry.status == 201, await retry.text()
    rows = await stored(db)
    assert [bytes(r["body"]) for r in rows] == [body]


async def test_a_row_fault_in_a_batch_fails_only_that_row_and_any_other_error_fails_the_batch(make_client, db) -> None:
    # The trigger refuses one key's values only (class 22): its batch mates are stored.
    client = await make_client(batching=True, batch_max_delay_ms=50.0)
    bodies = [(b'{"n":%d}' % i, "bad" if i == 1 else f"good-{i}") for i in range(3)]
    async with sqlstate_fault(db, "22023", key="bad"):
        answers = await asyncio.gather(*(
            client.post(URL, data=b, headers=headers(b, **{"Idempotency-Key": k})) for b, k in bodies
        ))
    assert [r.status for r in answers] == [201, 400, 201]
    assert sorted(r["idempotency_key"] for r in await stored(db)) == ["good-0", "good-2"]
