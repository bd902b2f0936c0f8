"""The combined feed: what its index costs ingest, and what the feed reads, in one run.

    python -m bench.feed [--rounds 3] [--seconds 8] [--events 200000] [--tenants 100] [--out FILE]

On one embedded PostgreSQL of its own (bench/database.py, migrated by the
working tree) and the working tree's ``codex-ingest serve``:

1. write: what ``events_feed (xact, id)`` (migration 0004_feed_order) costs
   ingest. Rounds alternate the index present ("with") and dropped
   ("without"), which one first alternating round by round. Before each point
   the table is emptied (TRUNCATE events, purge_horizons) and the index
   dropped, and created again (``CREATE INDEX events_feed ON events (xact,
   id)``, the migration's definition, checked) for a "with" point; then a
   fresh ``serve`` and bench.ab's two points, with the same requests for both:
   ``single`` (bench.point.run_point: 1 worker, batching on, 64 connections,
   wrk, half the requests repeats; rps, p99, the worker's and the database's
   CPU per request) and ``batch`` (bench.batch_load's drive: 2 workers, 4
   clients, NDJSON batches of 1,000 new 300-byte events; events/s and CPU per
   event). Ratios are with/without, taken within a round, then median
   [min..max] over the rounds.
2. read: --events events with bench/payloads' bodies (1-2 KB) and the
   headers the generic scheme keeps, seeded by SQL over --tenants tenants
   (sizes Zipf-like, s=1: the largest holds about a fifth of them with 100
   tenants), in transactions of 1-512 rows mixing tenants as micro-batches
   do; VACUUM ANALYZE; then, interleaved over the rounds (the order reversed
   every other round), three reads from the start with limit=1000, following
   next_cursor to an empty page: the whole combined feed with a ``*`` token
   (``feed_all``), the largest tenant with ``tenant=`` (``tenant``), and the
   feed of a token scoped to 3 tenants (the 2nd largest, the median, the
   smallest: ``feed_scoped``). Each: events/s, MB/s of bodies, pages, p50/p99
   page latency, and the check that every event in its scope was read
   exactly once (count and id set against the database, tenant in scope,
   cursors increasing, a sample of bodies and headers as stored). One
   unmeasured read of the whole feed warms the caches first; EXPLAIN says
   which index serves each read (custom and generic plans).

One JSON document on stdout (indented in --out), progress and a table on
stderr. Exit 1 when a check fails: rows stored differ from those
acknowledged, an answer other than 2xx, the service logged an error, the
index was not as a point needed, or a read missed or repeated an event.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.ab import (
    BATCH_CLIENTS,
    BATCH_EVENTS_PER_S,
    BATCH_ITEM_BYTES,
    BATCH_ITEMS,
    BATCH_WORKERS,
    DUPLICATES,
    NDJSON,
    SINGLE_CONNECTIONS,
    SINGLE_WORKERS,
    serving,
    spread,
)
from bench.batch_load import build_batches, drive
from bench.database import checkpoint, connection, count_rows, cpu_between, embedded_database, server_cpu
from bench.local import cpu_seconds
from bench.output import log, print_json, write_json
from bench.plan import SOURCE, build_plan
from bench.point import fresh_plan, run_point
from bench.python_load import drive_with_python
from bench.read_side.api import TOKEN, read_api_service
from bench.read_side.long_poll import percentile
from bench.read_side.seeding import body_prefixes, expected_body, table_facts, vacuum_analyze
from bench.service import SECRET, worker_pids
from bench.wrk import drive_with_wrk, wrk_or_python, wrk_version
from codex_ingest.storage.delivery import Cursor
from codex_ingest.storage.queries import load_queries

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("with", "without")
INDEX = "events_feed"
CREATE_INDEX = f"CREATE INDEX {INDEX} ON events (xact, id)"  # migrations/0004_feed_order.sql, without CONCURRENTLY
READS = ("feed_all", "tenant", "feed_scoped")
SCOPED_TOKEN = "bench-feed-scoped-" + uuid.uuid4().hex[:16]
USER_AGENT = "codex-bench-feed/1"


# -- 1. write: the index's cost on ingest --------------------------------------------------


async def set_table(url: str, index: bool) -> dict[str, Any]:
    """The events table emptied, ``events_feed`` dropped and, when ``index``, made again; what it is now."""
    async with connection(url) as conn:
        await conn.execute("TRUNCATE events, purge_horizons")
        await conn.execute(f"DROP INDEX IF EXISTS {INDEX}")
        if index:
            await conn.execute(CREATE_INDEX)
        return await index_state(conn)


async def index_state(conn: Any) -> dict[str, Any]:
    row = await conn.fetchrow(
        "SELECT pg_get_indexdef(i.indexrelid) AS definition, i.indisvalid AS valid,"
        " pg_relation_size(i.indexrelid) AS bytes FROM pg_index i WHERE i.indexrelid = to_regclass($1)", INDEX)
    if row is None:
        return {"present": False}
    return {"present": True, "valid": row["valid"], "definition": row["definition"],
            "mb": round(row["bytes"] / 2**20, 2)}


async def after_point(url: str) -> dict[str, Any]:
    """The table and the index as a point left them."""
    async with connection(url) as conn:
        rows = await conn.fetchval("SELECT count(*) FROM events")
        table_mb = await conn.fetchval("SELECT pg_relation_size('events')") / 2**20
        return {"rows_in_table": rows, "table_mb": round(table_mb, 2), "index": await index_state(conn)}


def service_errors(log_path: Path) -> list[str]:
    """The lines of a point's service log that say an error happened (JSON level error/critical, a traceback)."""
    if not log_path.exists():
        return []
    bad = ('"level": "error"', '"level":"error"', '"level": "critical"', '"level":"critical"', "Traceback")
    return [line for line in log_path.read_text(errors="replace").splitlines() if any(b in line for b in bad)]


class WriteRun:
    """The requests both sides get (built once), and the points."""

    def __init__(self, args: argparse.Namespace, server: Any, url: str, workdir: Path, use_wrk: bool) -> None:
        self.args = args
        self.server = server
        self.url = url
        self.workdir = workdir
        self.use_wrk = use_wrk
        self.plan = fresh_plan(args.seconds, SINGLE_CONNECTIONS, DUPLICATES, use_wrk)
        _, self.warm_plan = build_plan(total=20_000, unique=10_000, tenant="feed-warmup", secret=SECRET)
        run_id = uuid.uuid4().hex[:8]
        self.batch_tenant = f"feed-batch-{run_id}"
        count = max(20, int(BATCH_EVENTS_PER_S * args.seconds / BATCH_ITEMS))
        warm = 20 * args.warmup
        log(f"bench.feed: building {count} + {warm} batches of {BATCH_ITEMS} events")
        self.batches = build_batches(count, BATCH_ITEMS, BATCH_ITEM_BYTES, run_id, "ndjson")
        self.warm_batches = build_batches(warm, BATCH_ITEMS, BATCH_ITEM_BYTES, f"warm-{run_id}", "ndjson")

    def database_cpu(self) -> dict[int, float]:
        return server_cpu(self.server)

    def prepare(self, side: str) -> dict[str, Any]:
        state = asyncio.run(set_table(self.url, side == "with"))
        if state["present"] != (side == "with"):
            raise SystemExit(f"bench.feed: {INDEX} should be {'present' if side == 'with' else 'absent'}: {state}")
        return state

    def single(self, side: str, round_: int) -> dict[str, Any]:
        before = self.prepare(side)
        name = f"r{round_}-single-{side}"
        with serving(ROOT, self.url, SINGLE_WORKERS, {}, self.workdir, name) as (proc, port):
            if self.use_wrk:
                drive_with_wrk(port, self.warm_plan, "feed-warmup", SINGLE_CONNECTIONS, self.args.warmup, self.workdir)
            else:
                drive_with_python(port, self.warm_plan[:2000], SINGLE_CONNECTIONS)
            point = run_point(self.url, port, SINGLE_WORKERS, True, SINGLE_CONNECTIONS, self.args.seconds, DUPLICATES,
                              self.use_wrk, self.workdir, proc, plan=self.plan, database_cpu=self.database_cpu)
        point.update(self.settle(side, name, before))
        return point

    def batch(self, side: str, round_: int) -> dict[str, Any]:
        before = self.prepare(side)
        name = f"r{round_}-batch-{side}"
        with serving(ROOT, self.url, BATCH_WORKERS, {}, self.workdir, name) as (proc, port):
            pids = worker_pids(proc, BATCH_WORKERS)
            asyncio.run(drive(port, self.warm_batches, BATCH_CLIENTS, self.args.warmup, "feed-warmup", NDJSON))
            asyncio.run(checkpoint(self.url))
            db_before = self.database_cpu()
            cpu_before = cpu_seconds(pids)
            result = asyncio.run(drive(port, self.batches, BATCH_CLIENTS, self.args.seconds, self.batch_tenant, NDJSON))
            events = max(1, result["events_accepted"])
            result["cpu_us_per_event"] = round((cpu_seconds(pids) - cpu_before) / events * 1e6, 2)
            result["db_cpu_us_per_event"] = round(cpu_between(db_before, self.database_cpu()) / events * 1e6, 2)
        rows = asyncio.run(count_rows(self.url, self.batch_tenant))
        sent = result["batches"] * BATCH_ITEMS
        result["batches_ran_out"] = result["batches"] == len(self.batches)
        result["rows_stored"] = rows
        result["rows_ok"] = rows == sent == result["events_accepted"] and result["events_other"] == 0
        result["other_answers"] = sum(n for status, n in result["statuses"].items() if status != "200")
        result.update(self.settle(side, name, before))
        return result

    def settle(self, side: str, name: str, before: dict[str, Any]) -> dict[str, Any]:
        """What the point left: the table, the index (still as the point needed it), the service's errors."""
        after = asyncio.run(after_point(self.url))
        errors = service_errors(self.workdir / f"{name}.log")
        return {"feed_index": side == "with", "index_before": before, **after, "service_errors": len(errors),
                "service_error_lines": errors[:5],
                "index_ok": after["index"]["present"] == (side == "with") and after["index"].get("valid", True)}


SINGLE_FIGURES = ("rps", "p99_ms", "cpu_us_per_request", "db_cpu_us_per_request")
BATCH_FIGURES = ("events_per_s", "p99_ms", "cpu_us_per_event", "db_cpu_us_per_event")


def point_ok(point: dict[str, Any]) -> bool:
    return bool(point["rows_ok"] and point["other_answers"] == 0 and point["service_errors"] == 0
                and point["index_ok"])


def with_over_without(sides: dict[str, dict[str, Any]], names: tuple[str, ...]) -> dict[str, float]:
    w, wo = sides["with"], sides["without"]
    return {n: round(w[n] / wo[n], 3) for n in names if wo.get(n) and w.get(n) is not None}


def write_round(run: WriteRun, round_: int) -> dict[str, Any]:
    order = SIDES if round_ % 2 == 1 else SIDES[::-1]
    doc: dict[str, Any] = {"round": round_, "order": list(order)}
    for point, figures in (("single", SINGLE_FIGURES), ("batch", BATCH_FIGURES)):
        sides = {}
        for side in order:
            result = run.single(side, round_) if point == "single" else run.batch(side, round_)
            shown = ", ".join(f"{f} {result.get(f)}" for f in figures)
            log(f"write round {round_}: {point} {side} {INDEX}: {shown}; rows "
                f"{'ok' if result['rows_ok'] else 'WRONG'}, other answers {result['other_answers']}, "
                f"service errors {result['service_errors']}, index {'ok' if result['index_ok'] else 'WRONG'}"
                + (" (ran out of batches)" if result.get("batches_ran_out") else ""))
            sides[side] = result
        doc[point] = {**sides, "ratios": with_over_without(sides, figures)}
        log(f"write round {round_}: {point} with/without: {doc[point]['ratios']}")
    return doc


def summarize_write(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for point, figures in (("single", SINGLE_FIGURES), ("batch", BATCH_FIGURES)):
        mine = [r[point] for r in rounds]
        out[point] = {side: {f: round(statistics.median(m[side][f] for m in mine), 3)
                             for f in figures if all(f in m[side] for m in mine)} for side in SIDES}
        out[point]["ratios"] = {f: spread([m["ratios"][f] for m in mine])
                                for f in figures if all(f in m["ratios"] for m in mine)}
        out[point]["ok"] = all(point_ok(m[side]) for m in mine for side in SIDES)
    return out


def measure_write(args: argparse.Namespace, server: Any, url: str, workdir: Path) -> dict[str, Any]:
    use_wrk = wrk_or_python("bench.feed")
    migrated = asyncio.run(migrated_index(url))
    run = WriteRun(args, server, url, workdir, use_wrk)
    rounds = [write_round(run, r) for r in range(1, args.rounds + 1)]
    made = asyncio.run(set_table(url, True))
    return {
        "migration_index": migrated,
        "created_index": made.get("definition"),
        "same_definition": migrated.get("definition") == made.get("definition"),
        "load_generator": wrk_version() if use_wrk else "python",
        "single": {"connections": SINGLE_CONNECTIONS, "workers": SINGLE_WORKERS, "batching": True,
                   "duplicates": DUPLICATES},
        "batch": {"workers": BATCH_WORKERS, "clients": BATCH_CLIENTS, "items": BATCH_ITEMS,
                  "item_bytes": BATCH_ITEM_BYTES, "format": "ndjson"},
        "rounds": rounds,
        "medians": summarize_write(rounds),
    }


async def migrated_index(url: str) -> dict[str, Any]:
    """``events_feed`` as the migrations made it (before the bench drops it)."""
    async with connection(url) as conn:
        return await index_state(conn)


# -- 2. read: the combined feed at limit=1000 ---------------------------------------------

# bench/read_side/seeding.py's SEED_SQL (the same bodies: bench/payloads' documents with the key in
# "bench_event"), with the headers the generic scheme keeps, and no age.
FEED_SEED_SQL = """
INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, content_type, headers)
SELECT $1::text, $2::text, k.key, sha256(k.body), k.body, 'application/json',
       jsonb_build_object('content-type', 'application/json', 'user-agent', $7::text,
                          'x-signature', 'sha256=' || encode(sha256(k.body), 'hex'),
                          'idempotency-key', k.key, 'x-tenant-id', $1::text)
FROM generate_series($4::bigint, $5::bigint) AS g,
     LATERAL (SELECT $3::text || g AS key) AS named,
     LATERAL (SELECT named.key,
                     convert_to(($6::text[])[1 + g % cardinality($6::text[])] || named.key || '"}', 'UTF8') AS body
             ) AS k
"""


def tenant_sizes(events: int, tenants: int) -> list[int]:
    """``events`` over ``tenants``, Zipf-like (s=1): rank r gets about 1/(r+1) of the weight; each at least 1."""
    weights = [1 / (r + 1) for r in range(tenants)]
    total = sum(weights)
    sizes = [max(1, int(events * w / total)) for w in weights]
    sizes[0] += events - sum(sizes)
    if sizes[0] < 1:
        raise SystemExit(f"bench.feed: {events} events cannot fill {tenants} tenants")
    return sizes


def key_prefix(run_id: str, tenant: str) -> str:
    return f"{tenant}-k{run_id}-"


async def seed_feed(url: str, run_id: str, tenants: list[str], sizes: list[int],
                    rng: random.Random) -> dict[str, Any]:
    """Each tenant's events, mixed: transactions of 1-512 rows, each a few tenants' runs of 1-64 rows,
    tenants drawn in proportion to what each has left, so each tenant's events span the whole feed."""
    prefixes = body_prefixes()
    left = list(sizes)
    started = time.monotonic()
    transactions = statements = 0
    async with connection(url) as conn:
        while any(left):
            target, done = rng.randint(1, 512), 0
            async with conn.transaction():
                while done < target and any(left):
                    t = rng.choices(range(len(tenants)), weights=left)[0]
                    rows = min(left[t], rng.randint(1, 64), target - done)
                    first = sizes[t] - left[t]
                    # $1 tenant, $2 source, $3 key prefix, $4-$5 first and last n, $6 body prefixes, $7 user agent
                    await conn.execute(FEED_SEED_SQL, tenants[t], SOURCE, key_prefix(run_id, tenants[t]), first,
                                       first + rows - 1, prefixes, USER_AGENT)
                    left[t] -= rows
                    done += rows
                    statements += 1
            transactions += 1
        sizes_row = await conn.fetchrow(
            "SELECT count(*) AS rows, avg(octet_length(body))::float8 AS body,"
            " avg(octet_length(headers::text))::float8 AS headers FROM events")
    return {"rows": sizes_row["rows"], "transactions": transactions, "statements": statements,
            "seconds": round(time.monotonic() - started, 1), "avg_body_bytes": round(sizes_row["body"] or 0),
            "avg_headers_bytes": round(sizes_row["headers"] or 0)}


async def stored_ids(url: str) -> dict[str, set[int]]:
    """Every stored event's id, by tenant."""
    by_tenant: dict[str, set[int]] = {}
    async with connection(url) as conn:
        for row in await conn.fetch("SELECT tenant_id, id FROM events"):
            by_tenant.setdefault(row["tenant_id"], set()).add(row["id"])
    return by_tenant


def index_names(plan: Any) -> list[str]:
    """The indexes an EXPLAIN (FORMAT JSON) plan scans, in plan order."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "Index Name" in node and node["Index Name"] not in found:
                found.append(node["Index Name"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(plan)
    return found


async def plans(url: str, tenant: str, scoped: list[str], limit: int) -> dict[str, Any]:
    """Which indexes serve each read's first page: the plan for those values (custom) and the generic
    plan a prepared statement may switch to after five runs."""
    queries = load_queries()
    cap = 8 * 2**20
    reads = {
        "feed_all": (queries.sql("read_feed"), [None, "0", 0, limit, cap]),
        "tenant": (queries.sql("read_events"), [tenant, None, "0", 0, limit, cap]),
        "feed_scoped": (queries.sql("read_feed_of"), [scoped, None, "0", 0, limit, cap]),
    }
    out: dict[str, Any] = {}
    async with connection(url) as conn:
        for name, (sql, params) in reads.items():
            text = sql.strip().rstrip(";")
            custom = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {text}", *params)
            await conn.execute(f"PREPARE bench_feed_{name} AS {text}")
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            values = ", ".join(literal(p) for p in params)
            generic = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE bench_feed_{name}({values})")
            await conn.execute("RESET plan_cache_mode")
            await conn.execute(f"DEALLOCATE bench_feed_{name}")
            out[name] = {"custom": index_names(orjson.loads(custom)), "generic": index_names(orjson.loads(generic))}
    return out


def literal(value: Any) -> str:
    """A bench-made parameter as an SQL literal (for EXECUTE)."""
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "ARRAY[" + ", ".join(literal(v) for v in value) + "]::text[]"
    return "'" + str(value).replace("'", "''") + "'"


def body_length(b64: str) -> int:
    return len(b64) * 3 // 4 - (len(b64) - len(b64.rstrip("=")))


async def read_through(base_url: str, token: str, tenant: str | None, limit: int, deadline_s: float) -> dict[str, Any]:
    """Follow next_cursor from the start to an empty page: the feed (``tenant`` None) or one tenant."""
    ids: list[int] = []
    tenant_of: dict[int, str] = {}
    samples: list[dict[str, Any]] = []
    cursors: list[Cursor] = []
    page_ms: list[float] = []
    errors: list[str] = []
    body_bytes = wire_bytes = pages = 0
    cursor: str | None = None
    feed = tenant is None
    async with aiohttp.ClientSession(base_url, headers={"Authorization": f"Bearer {token}"},
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        started = time.perf_counter()
        while time.perf_counter() - started < deadline_s:
            params = {"limit": str(limit)} | ({"tenant": tenant} if tenant else {}) | ({"after": cursor} if cursor else {})
            asked = time.perf_counter()
            async with session.get("/events", params=params) as resp:
                raw = await resp.read()
                status = resp.status
            took = time.perf_counter() - asked
            pages += 1
            wire_bytes += len(raw)
            if status != 200:
                errors.append(f"{status} {raw[:200]!r}")
                break
            page = orjson.loads(raw)
            events = page["events"]
            if events:
                page_ms.append(took * 1000)
            for event in events:
                ids.append(event["event_id"])
                tenant_of[event["event_id"]] = event["tenant_id"]
                body_bytes += body_length(event["body_base64"])
                if event["event_id"] % 101 == 0:
                    samples.append(event)
            cursor = page["next_cursor"]
            try:
                cursors.append(Cursor.decode(cursor, feed=feed))
            except Exception as exc:  # noqa: BLE001 - any cursor it cannot read is a failure to report
                errors.append(f"next_cursor {cursor!r}: {exc}")
                break
            if not events:
                break
        else:
            errors.append(f"stopped at the {deadline_s:.0f} s bound")
        elapsed = time.perf_counter() - started
    return {"ids": ids, "tenant_of": tenant_of, "samples": samples, "cursors": cursors, "page_ms": page_ms,
            "pages": pages, "seconds": elapsed, "body_bytes": body_bytes, "wire_bytes": wire_bytes, "errors": errors}


def judge(got: dict[str, Any], scope: list[str], stored: dict[str, set[int]], run_id: str,
          prefixes: list[str]) -> dict[str, Any]:
    """A read's figures and its exactly-once check against what the database holds for ``scope``."""
    ids = got["ids"]
    expected: set[int] = set().union(*(stored.get(t, set()) for t in scope))
    seen = set(ids)
    in_scope = set(scope)
    bad_bodies = bad_headers = 0
    for event in got["samples"]:
        prefix = key_prefix(run_id, event["tenant_id"])
        key = event["idempotency_key"]
        if not key.startswith(prefix) or base64.b64decode(event["body_base64"]) != expected_body(
                prefixes, prefix, int(key[len(prefix):])):
            bad_bodies += 1
        headers = event.get("headers") or {}
        if headers.get("idempotency-key") != key or headers.get("x-tenant-id") != event["tenant_id"]:
            bad_headers += 1
    cursors = got["cursors"]
    seconds = got["seconds"]
    ms = got["page_ms"]
    figure = {
        "events_read": len(ids),
        "events_stored": len(expected),
        "pages": got["pages"],
        "seconds": round(seconds, 3),
        "events_per_s": round(len(ids) / seconds),
        "pages_per_s": round(got["pages"] / seconds, 1),
        "mb_per_s_of_bodies": round(got["body_bytes"] / seconds / 2**20, 2),
        "mb_per_s_on_wire": round(got["wire_bytes"] / seconds / 2**20, 2),
        "body_mb": round(got["body_bytes"] / 2**20, 2),
        "page_p50_ms": round(percentile(ms, 50), 2) if ms else None,
        "page_p99_ms": round(percentile(ms, 99), 2) if ms else None,
        "page_max_ms": round(max(ms), 2) if ms else None,
        "duplicates": len(ids) - len(seen),
        "missing": len(expected - seen),
        "strangers": len(seen - expected),
        "out_of_scope": sum(1 for t in got["tenant_of"].values() if t not in in_scope),
        "cursors_increasing": all(a < b for a, b in pairwise(cursors[:-1]))
        and (len(cursors) < 2 or cursors[-1] == cursors[-2]),
        "samples_checked": len(got["samples"]),
        "bad_bodies": bad_bodies,
        "bad_headers": bad_headers,
        "errors": got["errors"],
    }
    figure["exactly_once"] = (
        len(ids) == len(expected) and figure["duplicates"] == 0 and figure["missing"] == 0
        and figure["strangers"] == 0 and figure["out_of_scope"] == 0 and figure["cursors_increasing"]
        and bad_bodies == 0 and bad_headers == 0 and not got["errors"]
    )
    return figure


READ_FIGURES = ("events_per_s", "mb_per_s_of_bodies", "pages", "page_p50_ms", "page_p99_ms", "seconds")


def measure_read(args: argparse.Namespace, url: str, workdir: Path, run_id: str) -> dict[str, Any]:
    rng = random.Random(args.rng_seed)
    tenants = [f"feed-{run_id}-{r:03d}" for r in range(args.tenants)]
    sizes = tenant_sizes(args.events, args.tenants)
    one = tenants[0]
    scoped = [tenants[r] for r in sorted({min(1, args.tenants - 1), args.tenants // 2, args.tenants - 1})]
    state = asyncio.run(set_table(url, True))
    log(f"read: seeding {args.events:,} events over {args.tenants} tenants (largest {sizes[0]:,}, "
        f"smallest {sizes[-1]:,}); {INDEX} present: {state['present']}")
    seeded = asyncio.run(seed_feed(url, run_id, tenants, sizes, rng))
    seeded["vacuum_analyze_s"] = asyncio.run(vacuum_analyze(url))
    seeded["table"] = asyncio.run(table_facts(url))
    seeded["indexes_mb"] = asyncio.run(index_sizes(url))
    log(f"read: seeded {orjson.dumps(seeded).decode()}")
    stored = asyncio.run(stored_ids(url))
    explained = asyncio.run(plans(url, one, scoped, args.limit))
    log(f"read: indexes by plan: {orjson.dumps(explained).decode()}")
    prefixes = body_prefixes()
    reads = {
        "feed_all": (TOKEN, None, tenants),
        "tenant": (TOKEN, one, [one]),
        "feed_scoped": (SCOPED_TOKEN, None, scoped),
    }
    tokens = f"{TOKEN}=*;{SCOPED_TOKEN}={','.join(scoped)}"
    rounds: list[dict[str, Any]] = []
    with read_api_service(url, workdir, args.read_workers, CODEX_API_TOKENS=tokens) as svc:
        def once(name: str) -> dict[str, Any]:
            token, tenant, scope = reads[name]
            asyncio.run(checkpoint(url))
            got = asyncio.run(read_through(svc.base_url, token, tenant, args.limit, args.read_deadline))
            return judge(got, scope, stored, run_id, prefixes)

        warm = once("feed_all")
        log(f"read warm-up (feed_all, not measured): {warm['events_per_s']:,} events/s, "
            f"exactly once: {warm['exactly_once']}")
        for round_ in range(1, args.rounds + 1):
            order = READS if round_ % 2 == 1 else READS[::-1]
            doc: dict[str, Any] = {"round": round_, "order": list(order)}
            for name in order:
                figure = once(name)
                log(f"read round {round_}: {name}: {figure['events_read']:,} events in {figure['pages']} pages, "
                    f"{figure['events_per_s']:,} events/s, {figure['mb_per_s_of_bodies']} MB/s of bodies, "
                    f"page p50 {figure['page_p50_ms']} / p99 {figure['page_p99_ms']} ms, "
                    f"exactly once: {figure['exactly_once']}")
                doc[name] = figure
            rounds.append(doc)
    errors = service_errors(workdir / "service.log")
    medians = {name: {f: round(statistics.median(r[name][f] for r in rounds), 2) for f in READ_FIGURES}
               for name in READS}
    for name in READS:
        medians[name]["events_stored"] = rounds[0][name]["events_stored"]
        medians[name]["exactly_once"] = all(r[name]["exactly_once"] for r in rounds)
    return {
        "limit": args.limit, "workers": args.read_workers, "tenants": args.tenants, "events": args.events,
        "tenant_sizes": {"largest": sizes[0], "median": sizes[args.tenants // 2], "smallest": sizes[-1]},
        "tenant": one, "scoped_tenants": scoped, "index": state, "seed": seeded, "plans": explained,
        "warmup": warm, "rounds": rounds, "medians": medians,
        "service_errors": len(errors), "service_error_lines": errors[:5],
        "ok": warm["exactly_once"] and all(m["exactly_once"] for m in medians.values()) and not errors,
    }


async def index_sizes(url: str) -> dict[str, float]:
    async with connection(url) as conn:
        rows = await conn.fetch("SELECT indexrelname AS name, pg_relation_size(indexrelid) AS bytes"
                                " FROM pg_stat_user_indexes WHERE relname = 'events' ORDER BY 1")
    return {r["name"]: round(r["bytes"] / 2**20, 1) for r in rows}


# -- the run -------------------------------------------------------------------------------


def table(doc: dict[str, Any]) -> str:
    """The medians as a few lines for a terminal."""
    settings = doc["settings"]
    rows = [f"bench.feed: {settings['rounds']} rounds; medians; with/without {INDEX} as median [min..max]"]
    write = doc.get("write")
    if write is not None:
        labels = {"rps": "rps", "p99_ms": "p99 ms", "cpu_us_per_request": "worker CPU µs/request",
                  "db_cpu_us_per_request": "database CPU µs/request", "events_per_s": "events/s",
                  "cpu_us_per_event": "worker CPU µs/event", "db_cpu_us_per_event": "database CPU µs/event"}
        rows.append(f"{'write':8}{'':26}{'with':>12}{'without':>12}   with/without   ({settings['seconds']} s a point)")
        for point, figures in (("single", SINGLE_FIGURES), ("batch", BATCH_FIGURES)):
            summary = write["medians"][point]
            for i, figure in enumerate(f for f in figures if f in summary["with"]):
                r = summary["ratios"].get(figure)
                shown = f"{r['median']:.3f} [{r['min']:.3f}..{r['max']:.3f}]" if r else ""
                rows.append(f"{point if i == 0 else '':8}{labels[figure]:26}{summary['with'][figure]:>12,.1f}"
                            f"{summary['without'][figure]:>12,.1f}   {shown}")
            if not summary["ok"]:
                rows.append(f"{'':8}WRONG: rows, answers, service errors or the index in some {point} point")
    read = doc.get("read")
    if read is not None:
        rows.append(f"read, limit={read['limit']}, {read['events']:,} events over {read['tenants']} tenants:")
        rows.append(f"{'':14}{'events':>9}{'events/s':>10}{'MB/s':>8}{'pages':>7}{'p50 ms':>9}{'p99 ms':>9}"
                    "  exactly once")
        for name in READS:
            m = read["medians"][name]
            rows.append(f"{name:14}{m['events_stored']:>9,}{m['events_per_s']:>10,.0f}{m['mb_per_s_of_bodies']:>8.1f}"
                        f"{m['pages']:>7.0f}{m['page_p50_ms']:>9.1f}{m['page_p99_ms']:>9.1f}  "
                        f"{'yes' if m['exactly_once'] else 'NO'}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.feed", description=__doc__.split("\n\n")[0],
                                     epilog="More in docs/bench.md, under The combined feed.")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each part, the order alternating")
    parser.add_argument("--seconds", type=int, default=8, help="seconds of measured load per write point")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each write point, not measured")
    parser.add_argument("--events", type=int, default=200_000, help="events seeded for the reads")
    parser.add_argument("--tenants", type=int, default=100, help="tenants the seeded events are spread over")
    parser.add_argument("--limit", type=int, default=1000, help="page size of the reads")
    parser.add_argument("--read-workers", type=int, default=2, help="service workers during the reads")
    parser.add_argument("--read-deadline", type=float, default=300, help="bound on one read, seconds")
    parser.add_argument("--part", choices=("write", "read", "both"), default="both")
    parser.add_argument("--rng-seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON document here, indented")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds < 1 or args.warmup < 1:
        parser.error("--rounds, --seconds and --warmup must be at least 1")
    if args.tenants < 1 or args.events < args.tenants:
        parser.error("--events must be at least --tenants, and --tenants at least 1")
    os.environ.pop("RETENTION", None)  # the service must not purge by itself

    run_id = uuid.uuid4().hex[:8]
    started = time.monotonic()
    doc: dict[str, Any] = {
        "bench": "feed", "run_id": run_id, "cpus": os.cpu_count(),
        "tree": subprocess.run(["git", "--no-optional-locks", "-C", str(ROOT), "describe", "--always", "--dirty"],
                               capture_output=True, text=True).stdout.strip(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    with embedded_database("codex-feed-") as (server, url, _), \
            tempfile.TemporaryDirectory(prefix="codex-feed-work-") as work:
        workdir = Path(work)
        doc["postgres"] = asyncio.run(server_version(url))
        if args.part in ("write", "both"):
            doc["write"] = measure_write(args, server, url, workdir)
        if args.part in ("read", "both"):
            doc["read"] = measure_read(args, url, workdir, run_id)
    doc["checks"] = {
        "write_single": doc["write"]["medians"]["single"]["ok"] if "write" in doc else True,
        "write_batch": doc["write"]["medians"]["batch"]["ok"] if "write" in doc else True,
        "write_index_definition": doc["write"]["same_definition"] if "write" in doc else True,
        "read": doc["read"]["ok"] if "read" in doc else True,
    }
    doc["ok"] = all(doc["checks"].values())
    doc["total_s"] = round(time.monotonic() - started, 1)
    print_json(doc)
    if args.out is not None:
        write_json(args.out, doc)
        log(f"bench.feed: wrote {args.out}")
    log(table(doc))
    if not doc["ok"]:
        failed = ", ".join(name for name, ok in doc["checks"].items() if not ok)
        log(f"bench.feed: FAIL: {failed}")
        return 1
    return 0


async def server_version(url: str) -> str:
    async with connection(url) as conn:
        return str(await conn.fetchval("SHOW server_version"))


if __name__ == "__main__":
    sys.exit(main())
