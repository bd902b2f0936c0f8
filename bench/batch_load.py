"""Batch ingest throughput: events/s through POST /pos/{source}/ingest/batch,
beside pgbench's 100-row upsert on the same PostgreSQL, in one run.

    python -m bench.batch_load [--clients 4] [--items 1000] [--item-bytes 300] [--duration 8] [--workers 2]

Starts an embedded PostgreSQL and ``codex-ingest serve`` on it (as
bench.throughput does), builds every batch before the clock starts (signed
NDJSON, or a JSON array with ``--format json``; every item a new event), then
``--clients`` clients post batches back to back for ``--duration`` seconds.
Prints one JSON object: events/s, batches/s, p50/p99 per batch, pgbench's
events/s (tps x 100) and the ratio, and the rows check: rows stored for the
run's tenant == items answered accepted == distinct items sent.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import orjson

from bench.database import PGBENCH_UPSERT_100, checkpoint, count_rows, embedded_database, pgbench_tps
from bench.local import cpu_seconds, free_port
from bench.output import log, print_json, write_json
from bench.plan import signature
from bench.service import SECRET, start_service, stop_service, worker_pids

SOURCE = "batch-bench"


def build_batches(count: int, items: int, item_bytes: int, run_id: str, fmt: str) -> list[tuple[bytes, str]]:
    """``count`` signed bodies of ``items`` new events each, about ``item_bytes`` per item."""
    key = SECRET.encode()
    out = []
    for b in range(count):
        lines = []
        for i in range(items):
            head = f'{{"event_id":"{run_id}-{b}-{i}","type":"sale.completed","amount_cents":{(b * items + i) % 99991},"pad":"'
            lines.append(head + "x" * max(0, item_bytes - len(head) - 2) + '"}')
        body = ("\n".join(lines) if fmt == "ndjson" else "[" + ",".join(lines) + "]").encode()
        out.append((body, signature(key, body)))
    return out


async def drive(port: int, batches: list[tuple[bytes, str]], clients: int, seconds: float, tenant: str,
                content_type: str) -> dict:
    url = f"http://127.0.0.1:{port}/pos/{SOURCE}/ingest/batch"
    queue = list(reversed(batches))
    latencies: list[float] = []
    accepted = other = 0
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal accepted, other
        while queue and time.monotonic() < deadline:
            body, signature = queue.pop()
            started = time.monotonic()
            async with session.post(url, data=body, headers={
                "Content-Type": content_type, "X-Signature": signature, "X-Tenant-Id": tenant,
            }) as resp:
                doc = await resp.read()
            latencies.append(time.monotonic() - started)
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            if resp.status == 200:
                counts = orjson.loads(doc)["counts"]
                accepted += counts["accepted"]
                other += counts["duplicate"] + counts["conflict"] + counts["invalid"]

    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    return {
        "seconds": round(elapsed, 2),
        "batches": len(latencies),
        "events_accepted": accepted,
        "events_other": other,
        "statuses": {str(status): n for status, n in sorted(statuses.items())},
        "events_per_s": round(accepted / elapsed, 1),
        "batches_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--items", type=int, default=1000, help="events per batch")
    parser.add_argument("--item-bytes", type=int, default=300)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load")
    parser.add_argument("--batches", type=int, default=600, help="batches built beforehand (the most sent)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--format", choices=("ndjson", "json"), default="ndjson")
    parser.add_argument("--pgbench-clients", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    run_id = uuid.uuid4().hex[:8]
    tenant = f"batch-{run_id}"
    log(f"batch_load: building {args.batches} batches of {args.items} events")
    batches = build_batches(args.batches, args.items, args.item_bytes, run_id, args.format)
    content_type = "application/x-ndjson" if args.format == "ndjson" else "application/json"
    with embedded_database("codex-batch-bench-") as (server, url, _):
        asyncio.run(checkpoint(url))
        pg_tps = pgbench_tps(server, args.pgbench_clients, int(args.duration), PGBENCH_UPSERT_100)
        log(f"batch_load: pgbench 100-row upsert, {args.pgbench_clients} clients: {pg_tps:,.0f} tps")
        port = free_port()
        proc = start_service(url, port, args.workers, True, {
            "BATCH_MAX_ITEMS": str(args.items), "MAX_BATCH_BYTES": str(64 * 1024 * 1024)})
        try:
            asyncio.run(checkpoint(url))
            pids = worker_pids(proc, args.workers)
            cpu_before = cpu_seconds(pids)
            result = asyncio.run(drive(port, batches, args.clients, args.duration, tenant, content_type))
            # The service's own CPU per event: what the batch path costs, apart from PostgreSQL and the clients.
            result["service_cpu_us_per_event"] = round(
                (cpu_seconds(pids) - cpu_before) / max(1, result["events_accepted"]) * 1e6, 2)
        finally:
            stop_service(proc)
        rows = asyncio.run(count_rows(url, tenant))
    sent = result["batches"] * args.items
    report = {
        **result,
        "clients": args.clients, "items_per_batch": args.items, "item_bytes": args.item_bytes,
        "workers": args.workers, "format": args.format,
        "pgbench_events_per_s": round(pg_tps * 100, 1),
        "ratio": round(result["events_per_s"] / (pg_tps * 100), 3),
        "rows_stored": rows, "distinct_events_sent": sent,
        "rows_ok": rows == sent == result["events_accepted"] and result["events_other"] == 0,
    }
    print_json(report)
    if args.out is not None:
        write_json(args.out, report)
    if not report["rows_ok"]:
        log("batch_load: FAIL: rows stored differ from the events sent and accepted")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
