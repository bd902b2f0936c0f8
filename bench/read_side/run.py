"""Read-side bench: reading, waiting at the head, NOTIFY, purge and export, in one run.

    python -m bench.read_side --out bench/reference/read_side.json

On one embedded PostgreSQL of its own (bench/database.py, as
bench/throughput.py) and ``codex-ingest serve --no-migrate`` with the read API
on (bench/service.Service), only on 127.0.0.1, it measures (one module of
bench/read_side/ each):

1. read: N events of one tenant (seeded by SQL, in transactions of 1-512
   rows, like micro-batches), read back over HTTP by following next_cursor
   with limit=1000; events/s and pages/s; every event read exactly once.
2. long_poll: R readers wait at the head (wait=25); a sender posts one
   event at a time, after every reader has had the previous one and a small
   random pause; per event and reader, the time from the sender's 201 to
   the reader's answer (p50, p99); every reader gets every event once.
3. notify: ingest with READ_NOTIFY=on and off (read API on in both),
   interleaved on/off/on/off..., wrk at 64 connections, batching on, by
   bench/point.py's run_point; medians of each and the cost in percent.
4. purge: 1M rows received 30 days ago; the same wrk ingest once without a
   purge and once while ``codex-ingest purge --older-than 7d`` runs; p99,
   rps and the purge's own time.
5. export: peak RSS (os.wait4's ru_maxrss, and VmHWM polled) and time of
   ``codex-ingest export --tenant T > /dev/null`` over 1M and 100k events.

The old rows of 4. and 5. are seeded first, so they have the lowest ids, as
old rows do. Seeded rows are VACUUM ANALYZEd, so autovacuum does not land
inside a measurement by chance; each measurement starts right after a
CHECKPOINT. This machine is shared: before each measurement the bench waits
(up to --quiet-wait seconds) until no test suite runs (``pgrep -f
main-pytest``), samples every 2 s whether one starts during it
(``quiet.tests_during_share``), and then measures again, up to --retries
times within --budget seconds, keeping the discarded attempts (quiet.py).
Prints one JSON line per figure and writes them all to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench.database import connection, embedded_database
from bench.output import log, print_json, write_json
from bench.read_side.export import measure_export
from bench.read_side.long_poll import measure_long_poll
from bench.read_side.notify import measure_notify
from bench.read_side.purge import measure_purge
from bench.read_side.quiet import set_budget
from bench.read_side.read import measure_read
from bench.read_side.seeding import seed, table_facts, vacuum_analyze
from bench.wrk import wrk_installed, wrk_version

BENCH = Path(__file__).resolve().parents[1]


def emit(name: str, figure: dict[str, Any]) -> None:
    print_json({"figure": name, **figure})


def tool_versions(url: str) -> dict[str, str]:
    async def pg() -> str:
        async with connection(url) as conn:
            return str(await conn.fetchval("SHOW server_version"))

    return {"postgres": asyncio.run(pg()), "wrk": wrk_version(), "python": sys.version.split()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.read_side", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a small run (20k seed, 60 polled events, 2 pairs of 4 s, 100k purge, 100k/10k export)")
    parser.add_argument("--only", default="read,poll,notify,export,purge",
                        help="comma-separated parts to run: read, poll, notify, export, purge")
    parser.add_argument("--seed-events", type=int, default=200_000, help="events of the tenant read back (1.)")
    parser.add_argument("--limit", type=int, default=1000, help="page size of the read (1.)")
    parser.add_argument("--read-deadline", type=float, default=300, help="bound on the read, seconds (1.)")
    parser.add_argument("--readers", type=int, default=8, help="readers waiting at the head (2.)")
    parser.add_argument("--poll-events", type=int, default=300, help="events posted one at a time (2.)")
    parser.add_argument("--wait", type=float, default=25, help="wait= of the waiting readers (2.)")
    parser.add_argument("--poll-pause-ms", type=float, nargs=2, default=[0.0, 50.0], metavar=("MIN", "MAX"),
                        help="random pause before each post, once every reader has the previous event (2.)")
    parser.add_argument("--poll-deadline", type=float, default=300, help="bound on the long-poll part, seconds (2.)")
    parser.add_argument("--notify-pairs", type=int, default=4, help="on/off pairs, interleaved (3.)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (3., 4.)")
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk point (3., 4.)")
    parser.add_argument("--purge-rows", type=int, default=1_000_000, help="old rows seeded, then purged (4.)")
    parser.add_argument("--purge-timeout", type=float, default=600, help="bound on the purge, seconds (4.)")
    parser.add_argument("--export-events", type=int, default=1_000_000,
                        help="events of the large export (5.); its rows are the ones the purge deletes")
    parser.add_argument("--export-small-events", type=int, default=100_000, help="events of the small export (5.)")
    parser.add_argument("--export-timeout", type=float, default=600, help="bound on one export, seconds (5.)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="service workers")
    parser.add_argument("--quiet-wait", type=float, default=600,
                        help="longest wait for a running test suite (main-pytest) before each measurement")
    parser.add_argument("--retries", type=int, default=2,
                        help="measure again, up to this many times, when a test suite ran during a measurement")
    parser.add_argument("--budget", type=float, default=900,
                        help="seconds after which no measurement is repeated any more")
    parser.add_argument("--rng-seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "read_side.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.seed_events, args.poll_events, args.notify_pairs, args.duration = 20_000, 60, 2, 4
        args.purge_rows = args.export_events = 100_000
        args.export_small_events = 10_000
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    if unknown := parts - {"read", "poll", "notify", "export", "purge"}:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if ("purge" in parts or "export" in parts) and args.export_events != args.purge_rows:
        log("read_side: the large export reads the purge's old rows: --export-events follows --purge-rows")
        args.export_events = args.purge_rows
    if not wrk_installed() and parts & {"notify", "purge"}:
        parser.error("wrk is not installed (apt-get install wrk); it drives the ingest of parts notify and purge")
    os.environ.pop("RETENTION", None)  # the service must not purge by itself

    run_id = uuid.uuid4().hex[:8]
    started = time.monotonic()
    set_budget(started + args.budget)
    result: dict[str, Any] = {"bench": "read_side", "run_id": run_id, "cpus": os.cpu_count(),
                              "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)}}
    with embedded_database("codex-read-side-") as (_, url, workdir):
        result["versions"] = tool_versions(url)
        result["tree"] = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                        cwd=BENCH).stdout.strip()
        old_tenant, small_tenant = f"old-{run_id}", f"small-{run_id}"
        if parts & {"export", "purge"}:
            # First, so the old rows have the lowest ids, as old rows do: the purge walks ids upwards.
            log(f"seeding {args.purge_rows:,} events received 30 days ago ({old_tenant}) "
                f"and {args.export_small_events:,} of now ({small_tenant})")
            seeded: dict[str, Any] = {
                "old": asyncio.run(seed(url, old_tenant, args.purge_rows, key_prefix=f"old-{run_id}-",
                                        age_s=30 * 86400, rows_per_xact=(10_000, 10_000))),
                "small": asyncio.run(seed(url, small_tenant, args.export_small_events,
                                          key_prefix=f"small-{run_id}-", rows_per_xact=(10_000, 10_000))),
            }
            seeded["vacuum_analyze_s"] = asyncio.run(vacuum_analyze(url))
            seeded["table"] = asyncio.run(table_facts(url))
            log(f"seeded: {orjson.dumps(seeded).decode()}")
        if "read" in parts:
            result["read"] = measure_read(url, workdir, args, run_id)
            emit("read", result["read"])
        if "poll" in parts:
            result["long_poll"] = measure_long_poll(url, workdir, args, run_id)
            emit("long_poll", result["long_poll"])
        if "notify" in parts:
            result["notify"] = measure_notify(url, workdir, args)
            emit("notify", result["notify"])
        if "export" in parts:
            result["export"] = measure_export(url, workdir, args,
                                              {args.export_events: old_tenant, args.export_small_events: small_tenant})
            result["export"]["seed"] = seeded
            emit("export", result["export"])
        if "purge" in parts:
            result["purge"] = measure_purge(url, workdir, args, old_tenant)
            result["purge"]["seed"] = seeded
            emit("purge", result["purge"])
    result["total_s"] = round(time.monotonic() - started, 1)
    write_json(args.out, result)
    log(f"wrote {args.out} ({result['total_s']:.0f} s)")
    checks = {
        "read": result.get("read", {}).get("exactly_once", True),
        "long_poll": result.get("long_poll", {}).get("exactly_once", True),
        "notify": result.get("notify", {}).get("rows_ok", True),
        "export": result.get("export", {}).get("ok", True),
        "purge": result.get("purge", {}).get("ok", True),
    }
    if failed := [name for name, ok in checks.items() if not ok]:
        log(f"FAIL: {', '.join(failed)}")
        return 1
    return 0
