"""One measured point of signed single-event ingest against a running service
(bench.throughput's points, and those of bench.read_side and
bench.pgbouncer_cost): a plan of new and repeated events for a fresh tenant,
driven by wrk or, without it, by the Python load generator; the CPU the
service's workers spent per answered request; and the check that the rows
stored equal the distinct events sent."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.database import checkpoint, count_rows, cpu_between
from bench.local import cpu_seconds
from bench.plan import SOURCE, PlannedRequest, build_plan
from bench.python_load import drive_with_python, run
from bench.service import SECRET, worker_pids, worker_rss_mb
from bench.wrk import drive_with_wrk, rate_and_latency

# Above what this machine answers: wrk_plan.lua wraps around at the plan's end,
# and a wrap would add repeats beyond the share asked for.
EXPECTED_RPS = 20000


def fresh_plan(seconds: float, connections: int, duplicates: float, use_wrk: bool) -> tuple[str, list[PlannedRequest]]:
    """A tenant of its own and a plan for it, ``duplicates`` of its requests repeats."""
    tenant = f"bench-{uuid.uuid4().hex[:10]}"
    total = max(2000, int(EXPECTED_RPS * seconds * 1.2)) if use_wrk else max(2000, connections * 150)
    unique = max(1, int(total * (1 - duplicates)))
    _, plan = build_plan(total=total, unique=unique, tenant=tenant, secret=SECRET)
    return tenant, plan


async def settle_tail(port: int, plan: Sequence[PlannedRequest], sent: int, connections: int) -> int:
    """wrk stops with up to `connections` requests in flight: send those
    again, so every event wrk started to send is either stored or answered.
    Returns how many of them were stored only now (201)."""
    # wrk counts one request() call it never sends (its start-up probe), so
    # the first connection's worth of the plan is replayed too.
    indices = set(range(max(0, sent - connections - 1), sent)) | set(range(min(sent, connections + 1)))
    tail = [plan[i % len(plan)] for i in sorted(indices)]
    if not tail:
        return 0
    result = await run(f"http://127.0.0.1:{port}/pos/{SOURCE}/ingest", tail, min(connections, 32), 3600)
    if result["other"] or result["conflicts"]:
        raise RuntimeError(f"replaying the tail got unexpected answers: {result}")
    return int(result["accepted"])


def stored_rows(url: str, tenant: str, plan: Sequence[PlannedRequest], sent: int) -> tuple[int, int]:
    """(rows stored for ``tenant``, distinct events among the plan's first ``sent`` requests)."""
    sent_events = {plan[i % len(plan)].event for i in range(sent)}
    return asyncio.run(count_rows(url, tenant)), len(sent_events)


def run_point(url: str, port: int, workers: int, batching: bool, connections: int, seconds: int,
              duplicates: float, use_wrk: bool, workdir: Path, proc: subprocess.Popen,
              plan: tuple[str, list[PlannedRequest]] | None = None,
              database_cpu: Callable[[], dict[int, float]] | None = None) -> dict:
    """Drive the service on ``port`` (``proc``, with ``workers`` workers) for one point, and check its rows.

    ``plan``: (tenant, requests) to send instead of a fresh one (bench.ab sends both trees the same).
    ``database_cpu``: a reading of the database server's CPU by pid (bench.database.server_cpu); when
    given, the point also reports ``db_cpu_us_per_request``."""
    tenant, requests = plan if plan is not None else fresh_plan(seconds, connections, duplicates, use_wrk)
    pids = worker_pids(proc, workers)
    asyncio.run(checkpoint(url))
    db_before = database_cpu() if database_cpu is not None else {}
    cpu_before = cpu_seconds(pids)
    if use_wrk:
        measured = drive_with_wrk(port, requests, tenant, connections, seconds, workdir)
    else:
        measured = drive_with_python(port, requests, connections)
    cpu_us = (cpu_seconds(pids) - cpu_before) / max(measured["completed"], 1) * 1e6
    db_cpu = {} if database_cpu is None else {"db_cpu_us_per_request": round(
        cpu_between(db_before, database_cpu()) / max(measured["completed"], 1) * 1e6, 1)}
    if use_wrk:
        asyncio.run(settle_tail(port, requests, measured["sent"], connections))
    rows, distinct_sent = stored_rows(url, tenant, requests, measured["sent"])
    return {
        "connections": connections,
        "workers": workers,
        "batching": batching,
        **rate_and_latency(measured),
        "rss_mb_per_worker": worker_rss_mb(proc, workers),
        "cpu_us_per_request": round(cpu_us, 1),
        **db_cpu,
        "rows_stored": rows,
        "distinct_events_sent": distinct_sent,
        "rows_ok": rows == distinct_sent,
        "other_answers": measured["other"],
        "load_generator": "wrk" if use_wrk else "python",
    }
