"""The events table as the read-side parts use it: rows to read, export and
purge, seeded by SQL rather than ingested (old rows, received days ago, could
not be ingested at all); and what they check of it (ids, size, vacuum counts,
WAL written)."""

from __future__ import annotations

import random
import time
from typing import Any

import orjson

from bench.database import connection
from bench.plan import SOURCE, load_payloads

# Bodies are bench/payloads' documents with a "bench_event" field carrying the
# key, as bench/plan.py builds them: prefix || key || '"}'.
SEED_SQL = """
INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, content_type, received_at)
SELECT $1::text, $2::text, k.key, sha256(k.body), k.body, 'application/json',
       now() - $6::float8 * interval '1 second'
FROM generate_series($4::bigint, $5::bigint) AS g,
     LATERAL (SELECT $3::text || g AS key) AS named,
     LATERAL (SELECT named.key,
                     convert_to(($7::text[])[1 + g % cardinality($7::text[])] || named.key || '"}', 'UTF8') AS body
             ) AS k
"""


def body_prefixes() -> list[str]:
    prefixes = []
    for doc in load_payloads():
        text = orjson.dumps({**doc, "bench_event": ""}).decode()
        assert text.endswith('"bench_event":""}')
        prefixes.append(text[:-2])
    return prefixes


def expected_body(prefixes: list[str], key_prefix: str, n: int) -> bytes:
    return (prefixes[n % len(prefixes)] + f"{key_prefix}{n}" + '"}').encode()


async def seed(url: str, tenant: str, count: int, *, key_prefix: str, age_s: float = 0.0,
               rows_per_xact: tuple[int, int] = (1, 512), rng: random.Random | None = None) -> dict[str, Any]:
    """``count`` events for ``tenant``, each transaction a random number of rows in ``rows_per_xact``."""
    rng = rng or random.Random(1)
    prefixes = body_prefixes()
    started = time.monotonic()
    async with connection(url) as conn:
        n, transactions = 0, 0
        while n < count:
            rows = min(count - n, rng.randint(*rows_per_xact))
            # $1 tenant, $2 source, $3 key prefix, $4-$5 first and last n, $6 age in seconds, $7 body prefixes
            await conn.execute(SEED_SQL, tenant, SOURCE, key_prefix, n, n + rows - 1, age_s, prefixes)
            n += rows
            transactions += 1
        avg_body = await conn.fetchval(
            "SELECT avg(octet_length(body))::float8 FROM events WHERE tenant_id = $1", tenant)
    return {"rows": count, "transactions": transactions, "seconds": round(time.monotonic() - started, 1),
            "avg_body_bytes": round(avg_body or 0.0)}


async def vacuum_analyze(url: str) -> float:
    started = time.monotonic()
    async with connection(url) as conn:
        await conn.execute("VACUUM (ANALYZE) events")
    return round(time.monotonic() - started, 1)


async def fetch_ids(url: str, tenant: str) -> set[int]:
    async with connection(url) as conn:
        return {r["id"] for r in await conn.fetch("SELECT id FROM events WHERE tenant_id = $1", tenant)}


async def table_facts(url: str) -> dict[str, Any]:
    async with connection(url) as conn:
        row = await conn.fetchrow(
            "SELECT count(*) AS rows, pg_total_relation_size('events') AS bytes FROM events")
        vac = await conn.fetchrow(
            "SELECT autovacuum_count, autoanalyze_count FROM pg_stat_user_tables WHERE relname = 'events'")
    return {"rows": row["rows"], "total_mb": round(row["bytes"] / 2**20), "autovacuum_count": vac["autovacuum_count"],
            "autoanalyze_count": vac["autoanalyze_count"]}


async def wal_lsn(url: str) -> str:
    async with connection(url) as conn:
        return str(await conn.fetchval("SELECT pg_current_wal_lsn()::text"))


async def wal_mb_since(url: str, lsn: str) -> float:
    async with connection(url) as conn:
        return round(float(await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)", lsn))
                     / 2**20, 1)
