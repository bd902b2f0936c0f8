"""The console's pages on a large table: how long the server takes to answer each.

    python -m bench.console [--rows 10000 1000000] [--repeats 20] [--out FILE]

For each --rows, on one embedded PostgreSQL of its own (bench/database.py,
migrated by the working tree), rows are stored by SQL (300-byte bodies, 1,000
tenants, 10,000 rows a transaction) and analyzed; then the working tree's
``codex-ingest serve`` (1 worker, a read token) is signed in to, and each page
is fetched --repeats times on 127.0.0.1, interleaved:

- ``first``: /console/events, the newest page;
- ``page_100``: the 100th page, reached by following "Older" links (the link
  is taken once, then fetched as the others are);
- ``tenant``: the newest page of one tenant (/console/events?tenant=...);
- ``key``: a search by idempotency key with its tenant, and ``key_any``
  without it;
- ``event``: one event's page.

It reports each page's median and p90 time (wall time of the request, the
server's work plus one loopback round trip) and the plan PostgreSQL uses for
the events query. One JSON document on stdout (indented in --out), a table on
stderr. Exit 1 when a page is not answered 200.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import time
from html import unescape
from pathlib import Path
from typing import Any

import aiohttp

from bench.database import connection, embedded_database
from bench.local import free_port
from bench.output import log, print_json, write_json
from bench.service import SECRET, Service
from codex_ingest.storage.queries import load_queries

TOKEN = "bench-console-token-0123456789"
TENANTS = 1000
CHUNK = 10_000
SEED_SQL = """
INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, content_type, headers)
SELECT 'tenant-' || (n % $3), 'orders', 'key-' || n, sha256(b.body), b.body, 'application/json',
       '{"user-agent": "bench.console"}'::jsonb
FROM generate_series($1::bigint, $2::bigint) AS n,
     LATERAL (SELECT convert_to('{"n":' || n || ',"pad":"' || repeat('x', 270) || '"}', 'UTF8') AS body) AS b
"""


async def seed(url: str, rows: int) -> float:
    started = time.monotonic()
    async with connection(url) as conn:
        for first in range(1, rows + 1, CHUNK):
            await conn.execute(SEED_SQL, first, min(rows, first + CHUNK - 1), TENANTS)  # $1-$2 n, $3 tenants
        await conn.execute("VACUUM ANALYZE events")
    return time.monotonic() - started


async def plans(url: str) -> dict[str, str]:
    """How PostgreSQL runs the console's events query: the first page, and one tenant's."""
    sql = load_queries().sql("console_events")
    out = {}
    async with connection(url) as conn:
        # $1 tenants, $2 tenant, $3 source, $4 from, $5 to, $6-$7 before, $8 limit, $9 id, $10 key
        for name, tenant in (("first", None), ("tenant", "tenant-7")):
            rows = await conn.fetch("EXPLAIN " + sql, None, tenant, None, None, None, None, None, 51, None, None)
            out[name] = " / ".join(r[0].strip() for r in rows[:4])
    return out


async def measure(base: str, rows: int, repeats: int) -> dict[str, Any]:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        async with session.post(f"{base}/console/signin", data={"token": TOKEN}, allow_redirects=False) as resp:
            if resp.status != 303:
                raise RuntimeError(f"sign-in answered {resp.status}")
        path = "/console/events"
        for _ in range(99):  # the 100th page's link, by following "Older"
            async with session.get(base + path) as resp:
                found = re.search(r'<a id="older" href="([^"]+)">', await resp.text())
            if found is None:
                break
            path = unescape(found.group(1))
        pages = {
            "first": "/console/events",
            "page_100": path,
            "tenant": "/console/events?tenant=tenant-7",
            "key": f"/console/events?tenant=tenant-{(rows // 2) % TENANTS}&q=key-{rows // 2}",
            "key_any": f"/console/events?q=key-{rows // 2}",
            "event": f"/console/events/{rows // 2}",
        }
        times: dict[str, list[float]] = {name: [] for name in pages}
        bad: list[str] = []
        for _ in range(repeats):
            for name, page in pages.items():
                started = time.perf_counter()
                async with session.get(base + page) as resp:
                    await resp.read()
                    if resp.status != 200:
                        bad.append(f"{name}: {resp.status}")
                times[name].append((time.perf_counter() - started) * 1000)
    out: dict[str, Any] = {}
    for name, values in times.items():
        values.sort()
        out[name] = {"median_ms": round(statistics.median(values), 2),
                     "p90_ms": round(values[int(0.9 * (len(values) - 1))], 2)}
    out["bad_answers"] = bad
    return out


def run(rows: int, repeats: int) -> dict[str, Any]:
    with embedded_database("codex-console-") as (_server, url, workdir):
        seeded = asyncio.run(seed(url, rows))
        log(f"{rows} rows stored in {seeded:.1f} s")
        service = Service(url, free_port(), SECRET, workdir / "serve.log", workers=1,
                          env={"CODEX_API_TOKENS": f"{TOKEN}=*", "LOG_LEVEL": "WARNING"})
        try:
            service.start()
            result = asyncio.run(measure(service.base_url, rows, repeats))
            service.terminate()
        finally:
            service.cleanup()
        result["plans"] = asyncio.run(plans(url))
        result["seed_seconds"] = round(seeded, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    doc = {"bench": "console", "repeats": args.repeats, "results": {}}
    for rows in args.rows:
        doc["results"][str(rows)] = run(rows, args.repeats)
        result = doc["results"][str(rows)]
        log(f"{rows} rows: " + ", ".join(f"{k} {v['median_ms']} ms (p90 {v['p90_ms']})"
                                         for k, v in result.items() if isinstance(v, dict) and 'median_ms' in v))
    if args.out:
        write_json(args.out, doc)
    print_json(doc)
    return 1 if any(r["bad_answers"] for r in doc["results"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
