"""4. purge: 1M rows received 30 days ago; the same wrk ingest once without a
purge and once while ``codex-ingest purge --older-than 7d`` runs; p99, rps
and the purge's own time."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

from bench.database import checkpoint
from bench.local import cpu_seconds
from bench.output import log
from bench.point import fresh_plan, settle_tail, stored_rows
from bench.read_side.api import read_api_service
from bench.read_side.quiet import guarded
from bench.read_side.seeding import fetch_ids, table_facts, wal_lsn, wal_mb_since
from bench.service import Service, cli_command, worker_pids
from bench.wrk import drive_with_wrk, rate_and_latency


def ingest_point(url: str, svc: Service, args: argparse.Namespace, workdir: Path,
                 during: list[str] | None) -> dict[str, Any]:
    """bench/point.py's run_point measurement, with ``during`` (a command) started right before wrk."""
    assert svc.proc is not None
    tenant, plan = fresh_plan(args.duration, args.connections, 0.5, True)
    pids = worker_pids(svc.proc, args.workers)
    asyncio.run(checkpoint(url))
    wal_before = asyncio.run(wal_lsn(url))
    job_out = (workdir / "purge.out").open("w+") if during is not None else None
    jobs: list[subprocess.Popen[str]] = []
    marks: dict[str, float] = {}

    def start() -> None:
        # Called once wrk's plan file is written, right before wrk starts.
        marks["started"] = time.monotonic()
        if during is not None:
            jobs.append(subprocess.Popen(during, env={**os.environ, "DATABASE_URL": url}, stdout=job_out,
                                         stderr=subprocess.STDOUT, text=True))

    cpu_before = cpu_seconds(pids)
    measured = drive_with_wrk(svc.port, plan, tenant, args.connections, args.duration, workdir, before_start=start)
    wrk_s = time.monotonic() - marks["started"]
    job, started = (jobs[0] if jobs else None), marks["started"]
    cpu_us = (cpu_seconds(pids) - cpu_before) / max(measured["completed"], 1) * 1e6
    job_figures: dict[str, Any] = {}
    if job is not None and job_out is not None:
        job_running_at_wrk_end = job.poll() is None
        try:
            job.wait(timeout=args.purge_timeout)
        except subprocess.TimeoutExpired:
            job.kill()
            job.wait()
        ended = time.monotonic()
        job_out.seek(0)
        output = job_out.read()
        job_out.close()
        match = re.search(r"deleted (\d+) event", output)
        job_figures = {
            "purge_s": round(ended - started, 1),
            "purge_exit": job.returncode,
            "purge_deleted": int(match.group(1)) if match else None,
            "purge_output": output.strip()[-300:],
            "purge_ran_through_wrk": job_running_at_wrk_end,
            "purge_rows_per_s": round(int(match.group(1)) / (ended - started)) if match else None,
        }
    wal_mb = asyncio.run(wal_mb_since(url, wal_before))  # the wrk run and, with a purge, the whole purge
    asyncio.run(settle_tail(svc.port, plan, measured["sent"], args.connections))
    rows, distinct_sent = stored_rows(url, tenant, plan, measured["sent"])
    return {
        **rate_and_latency(measured),
        "cpu_us_per_request": round(cpu_us, 1),
        "wrk_s": round(wrk_s, 1),
        "wal_mb": wal_mb,
        "rows_ok": rows == distinct_sent,
        "other_answers": measured["other"],
        **job_figures,
    }


def measure_purge(url: str, workdir: Path, args: argparse.Namespace, old_tenant: str) -> dict[str, Any]:
    before = asyncio.run(table_facts(url))
    with read_api_service(url, workdir, args.workers) as svc:
        no_purge = guarded("purge: without", args, lambda: ingest_point(url, svc, args, workdir, None))
        log(f"purge: without a purge {orjson.dumps(no_purge).decode()}")
        between = asyncio.run(table_facts(url))
        # One shot: the purge cannot be measured again without seeding again.
        with_purge = guarded("purge: while purging", args, lambda: ingest_point(
            url, svc, args, workdir, [*cli_command(), "purge", "--older-than", "7d"]), retries=0)
        log(f"purge: while purging {orjson.dumps(with_purge).decode()}")
    after = asyncio.run(table_facts(url))
    old_left = len(asyncio.run(fetch_ids(url, old_tenant)))
    return {
        "connections": args.connections,
        "workers": args.workers,
        "old_rows": args.purge_rows,
        "duration_s": args.duration,
        "no_purge": no_purge,
        "with_purge": with_purge,
        "p99_ratio": round(with_purge["p99_ms"] / no_purge["p99_ms"], 2),
        "rps_change_pct": round((with_purge["rps"] - no_purge["rps"]) / no_purge["rps"] * 100, 1),
        "old_rows_left": old_left,
        "table_before": before,
        "table_between": between,
        "table_after": after,
        "ok": no_purge["rows_ok"] and with_purge["rows_ok"] and not no_purge["other_answers"]
        and not with_purge["other_answers"] and with_purge.get("purge_exit") == 0
        and with_purge.get("purge_deleted") == args.purge_rows and old_left == 0,
    }
