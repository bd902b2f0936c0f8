"""Read-side bench: reading, waiting at the head, NOTIFY, purge and export, in one run.

    python -m bench.read_side --out bench/reference/read_side.json

On one embedded PostgreSQL of its own (as bench/throughput.py) and
``codex-ingest serve --no-migrate`` with the read API on (bench/faults.Service),
only on 127.0.0.1, it measures:

1. read: N events of one tenant (seeded by SQL, in transactions of 1-512
   rows, like micro-batches), read back over HTTP by following next_cursor
   with limit=1000; events/s and pages/s; every event read exactly once.
2. long_poll: R readers wait at the head (wait=25); a sender posts one
   event at a time, after every reader has had the previous one and a small
   random pause; per event and reader, the time from the sender's 201 to
   the reader's answer (p50, p99); every reader gets every event once.
3. notify: ingest with READ_NOTIFY=on and off (read API on in both),
   interleaved on/off/on/off..., wrk at 64 connections, batching on, by
   bench/throughput.run_point; medians of each and the cost in percent.
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
times within --budget seconds, keeping the discarded attempts. Prints one
JSON line per figure and writes them all to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from bench import throughput
from bench.faults import Service, SignedLoad
from bench.local import free_port
from bench.plan import build_plan, load_payloads
from codex_ingest.storage.delivery import Cursor

SECRET = throughput.SECRET          # run_point signs its plan with it
TOKEN = "bench-read-side-token-" + uuid.uuid4().hex[:16]
POLL_SOURCE = "square"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit(name: str, figure: dict[str, Any]) -> None:
    print(orjson.dumps({"figure": name, **figure}).decode(), flush=True)


# -- the machine ---------------------------------------------------------------


def tests_running() -> bool:
    """What ``pgrep -f main-pytest`` answers: a process whose command line holds ``main-pytest``."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if b"main-pytest" in (entry / "cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def wait_for_quiet(limit: float, poll: float = 10.0) -> dict[str, Any]:
    """Wait until no test suite runs here, polling every ``poll`` s, at most ``limit`` seconds."""
    start = time.monotonic()
    while True:
        busy = tests_running()
        waited = round(time.monotonic() - start, 1)
        if not busy:
            if waited:
                log(f"read_side: the test suite ended after {waited:.0f} s; measuring")
            return {"waited_s": waited, "tests_running_at_start": False}
        if waited >= limit:
            log(f"read_side: the test suite still runs after {waited:.0f} s; measuring anyway")
            return {"waited_s": waited, "tests_running_at_start": True}
        if not waited:
            log("read_side: the test suite (main-pytest) is running; waiting for it to end")
        time.sleep(poll)


class Quiet:
    """Waits for the test suite to end, then samples every 2 s whether one runs during the measurement."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.info: dict[str, Any] = {}
        self._stop = threading.Event()
        self._samples = self._busy = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Quiet:
        self.info = wait_for_quiet(self.limit)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(2.0):
            self._samples += 1
            self._busy += tests_running()

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.info["tests_during_share"] = round(self._busy / self._samples, 2) if self._samples else 0.0


_BUDGET = {"deadline": float("inf")}


def guarded(label: str, args: argparse.Namespace, measure: Any, retries: int | None = None) -> dict[str, Any]:
    """``measure()`` after the test suite ends; again (up to ``retries`` times, within the run's
    time budget) when a test suite ran during it. Discarded attempts are kept."""
    retries = args.retries if retries is None else retries
    discarded: list[dict[str, Any]] = []
    attempt = 0
    while True:
        with Quiet(args.quiet_wait) as quiet:
            figure = measure()
        figure["quiet"] = quiet.info
        if discarded:
            figure["discarded_for_tests"] = discarded
        busy = quiet.info["tests_during_share"] > 0
        if not busy or attempt >= retries or time.monotonic() > _BUDGET["deadline"]:
            if busy:
                log(f"{label}: a test suite ran during this measurement (kept; no retry left)")
            return figure
        attempt += 1
        log(f"{label}: a test suite ran during this measurement; measuring again ({attempt}/{retries})")
        discarded.append({k: v for k, v in figure.items() if k != "discarded_for_tests"})


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def cli_command() -> list[str]:
    """The real ``codex-ingest`` command of this interpreter's environment."""
    script = Path(sys.executable).parent / "codex-ingest"
    return [str(script)] if script.exists() else [sys.executable, "-m", "codex_ingest"]


# -- seeding by SQL ------------------------------------------------------------

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
    conn = await asyncpg.connect(url)
    try:
        n, transactions = 0, 0
        while n < count:
            rows = min(count - n, rng.randint(*rows_per_xact))
            await conn.execute(SEED_SQL, tenant, POLL_SOURCE, key_prefix, n, n + rows - 1, age_s, prefixes)
            n += rows
            transactions += 1
        avg_body = await conn.fetchval(
            "SELECT avg(octet_length(body))::float8 FROM events WHERE tenant_id = $1", tenant)
    finally:
        await conn.close()
    return {"rows": count, "transactions": transactions, "seconds": round(time.monotonic() - started, 1),
            "avg_body_bytes": round(avg_body or 0.0)}


async def vacuum_analyze(url: str) -> float:
    started = time.monotonic()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM (ANALYZE) events")
    finally:
        await conn.close()
    return round(time.monotonic() - started, 1)


async def fetch_ids(url: str, tenant: str) -> set[int]:
    conn = await asyncpg.connect(url)
    try:
        return {r["id"] for r in await conn.fetch("SELECT id FROM events WHERE tenant_id = $1", tenant)}
    finally:
        await conn.close()


async def table_facts(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS rows, pg_total_relation_size('events') AS bytes FROM events")
        vac = await conn.fetchrow(
            "SELECT autovacuum_count, autoanalyze_count FROM pg_stat_user_tables WHERE relname = 'events'")
    finally:
        await conn.close()
    return {"rows": row["rows"], "total_mb": round(row["bytes"] / 2**20), "autovacuum_count": vac["autovacuum_count"],
            "autoanalyze_count": vac["autoanalyze_count"]}


async def wal_lsn(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SELECT pg_current_wal_lsn()::text"))
    finally:
        await conn.close()


async def wal_mb_since(url: str, lsn: str) -> float:
    conn = await asyncpg.connect(url)
    try:
        return round(float(await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)", lsn))
                     / 2**20, 1)
    finally:
        await conn.close()


# -- the service ---------------------------------------------------------------


def service(url: str, workdir: Path, workers: int, **env: str) -> Service:
    svc = Service(
        database_url=url, port=free_port(), secret=SECRET, log_path=workdir / "service.log", workers=workers,
        env={"CODEX_API_TOKENS": f"{TOKEN}=*", "BATCHING": "on", "LOG_LEVEL": "WARNING", **env},
    )
    svc.start()
    return svc


# -- 1. read throughput ----------------------------------------------------------


async def read_all(base_url: str, tenant: str, limit: int, deadline_s: float) -> dict[str, Any]:
    """Follow next_cursor from the start until an empty page; every event's id, key and a sample of bodies."""
    ids: list[int] = []
    keys: list[str] = []
    sample_bodies: list[tuple[str, str]] = []
    cursors: list[Cursor] = []
    errors: list[str] = []
    pages = 0
    cursor: str | None = None
    async with aiohttp.ClientSession(
        base_url, headers=HEADERS, timeout=aiohttp.ClientTimeout(total=60),
    ) as session:
        started = time.perf_counter()
        while time.perf_counter() - started < deadline_s:
            params = {"tenant": tenant, "limit": str(limit)} | ({"after": cursor} if cursor else {})
            async with session.get("/events", params=params) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    errors.append(f"{resp.status} {raw[:200]!r}")
                    break
            page = orjson.loads(raw)
            pages += 1
            events = page["events"]
            for event in events:
                ids.append(event["event_id"])
                keys.append(event["idempotency_key"])
                if event["event_id"] % 101 == 0:
                    sample_bodies.append((event["idempotency_key"], event["body_base64"]))
            cursor = page["next_cursor"]
            cursors.append(Cursor.decode(cursor))
            if not events:
                break
        else:
            errors.append(f"stopped at the {deadline_s:.0f} s bound")
        elapsed = time.perf_counter() - started
    return {"ids": ids, "keys": keys, "sample_bodies": sample_bodies, "cursors": cursors, "pages": pages,
            "seconds": elapsed, "errors": errors}


def measure_read(url: str, workdir: Path, args: argparse.Namespace, run_id: str) -> dict[str, Any]:
    tenant = f"read-{run_id}"
    key_prefix = f"seed-{run_id}-"
    log(f"read: seeding {args.seed_events:,} events for {tenant}")
    seeded = asyncio.run(seed(url, tenant, args.seed_events, key_prefix=key_prefix))
    seeded["vacuum_analyze_s"] = asyncio.run(vacuum_analyze(url))
    stored = asyncio.run(fetch_ids(url, tenant))
    return guarded("read", args, lambda: read_once(url, workdir, args, tenant, key_prefix, stored, seeded))


def read_once(url: str, workdir: Path, args: argparse.Namespace, tenant: str, key_prefix: str, stored: set[int],
              seeded: dict[str, Any]) -> dict[str, Any]:
    svc = service(url, workdir, args.workers)
    try:
        asyncio.run(throughput.checkpoint(url))
        got = asyncio.run(read_all(svc.base_url, tenant, args.limit, args.read_deadline))
    finally:
        svc.terminate()
        svc.cleanup()
    ids = got["ids"]
    prefixes = body_prefixes()
    bad_keys = sum(1 for k in got["keys"] if not k.startswith(key_prefix))
    bad_bodies = sum(
        1 for key, b64 in got["sample_bodies"]
        if base64.b64decode(b64) != expected_body(prefixes, key_prefix, int(key[len(key_prefix):]))
    )
    cursors = got["cursors"]
    events = len(ids)
    figure = {
        "tenant_events": args.seed_events,
        "limit": args.limit,
        "workers": args.workers,
        "events_read": events,
        "pages": got["pages"],
        "seconds": round(got["seconds"], 2),
        "events_per_s": round(events / got["seconds"]),
        "pages_per_s": round(got["pages"] / got["seconds"], 1),
        "mb_per_s_of_bodies": round(events * seeded["avg_body_bytes"] / got["seconds"] / 2**20, 1),
        "distinct_ids": len(set(ids)),
        "duplicates": events - len(set(ids)),
        "missing": len(stored - set(ids)),
        "strangers": len(set(ids) - stored),
        "cursors_increasing": all(a < b for a, b in pairwise(cursors[:-1]))
        and (len(cursors) < 2 or cursors[-1] == cursors[-2]),
        "ids_ascending": all(a < b for a, b in pairwise(ids)),
        "bad_keys": bad_keys,
        "bodies_checked": len(got["sample_bodies"]),
        "bad_bodies": bad_bodies,
        "errors": got["errors"],
        "seed": seeded,
    }
    figure["exactly_once"] = (
        figure["duplicates"] == 0 and figure["missing"] == 0 and figure["strangers"] == 0 and events == len(stored)
        and not got["errors"] and bad_keys == 0 and bad_bodies == 0
    )
    return figure


# -- 2. long-poll latency --------------------------------------------------------


async def long_poll(base_url: str, tenant: str, readers: int, count: int, wait: float,
                    pause_ms: tuple[float, float], deadline_s: float, seed_: int) -> dict[str, Any]:
    rng = random.Random(seed_)
    load = SignedLoad(url=f"{base_url}/pos/{POLL_SOURCE}/ingest", secret=SECRET, tenant=tenant, concurrency=1)
    received: list[dict[str, float]] = [{} for _ in range(readers)]   # key -> when the reader's answer came
    duplicates = [0] * readers
    answers = [0] * readers
    empty_answers = [0] * readers
    errors: list[str] = []
    progress = asyncio.Event()
    acked: dict[str, float] = {}
    statuses: dict[int, int] = {}
    stalled: list[dict[str, Any]] = []

    async def reader(i: int, session: aiohttp.ClientSession) -> None:
        cursor: str | None = None
        while True:
            params = {"tenant": tenant, "limit": "1000", "wait": f"{wait:g}"} | ({"after": cursor} if cursor else {})
            try:
                async with session.get("/events", params=params) as resp:
                    raw = await resp.read()
                    came = time.monotonic()
                    status = resp.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                errors.append(f"reader {i}: {type(exc).__name__}")
                await asyncio.sleep(0.1)
                continue
            if status != 200:
                errors.append(f"reader {i}: {status} {raw[:200]!r}")
                await asyncio.sleep(0.1)
                continue
            page = orjson.loads(raw)
            answers[i] += 1
            if not page["events"]:
                empty_answers[i] += 1
            for event in page["events"]:
                key = event["idempotency_key"]
                if key in received[i]:
                    duplicates[i] += 1
                else:
                    received[i][key] = came
            cursor = page["next_cursor"]
            progress.set()

    async def all_have(n: int, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while min(len(r) for r in received) < n:
            progress.clear()
            remaining = end - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(progress.wait(), remaining)
            except TimeoutError:
                return False
        return True

    started = time.monotonic()
    sent = 0
    async with aiohttp.ClientSession(
        base_url, headers=HEADERS, connector=aiohttp.TCPConnector(limit=readers),
        timeout=aiohttp.ClientTimeout(total=wait + 10),
    ) as read_session, load.session() as send_session:
        tasks = [asyncio.create_task(reader(i, read_session)) for i in range(readers)]
        try:
            await asyncio.sleep(1.0)  # every reader is waiting at the (empty) head
            for n in range(count):
                if time.monotonic() - started > deadline_s:
                    errors.append(f"sender stopped at the {deadline_s:.0f} s bound after {n} events")
                    break
                t0 = time.monotonic()
                if not await all_have(n, wait + 5):
                    errors.append(f"not every reader had event {n - 1} after {wait + 5:g} s")
                if n and time.monotonic() - t0 > 1.0:
                    late = [i for i, r in enumerate(received) if load.key(n - 1) not in r or
                            r[load.key(n - 1)] - acked.get(load.key(n - 1), 0) > 1.0]
                    stalled.append({"event": n - 1, "readers_late": late,
                                    "waited_s": round(time.monotonic() - t0, 2)})
                await asyncio.sleep(rng.uniform(*pause_ms) / 1000)
                answer = await load.send(send_session, n)
                statuses[answer.status] = statuses.get(answer.status, 0) + 1
                sent += 1
                if answer.status == 201:
                    acked[answer.key] = answer.answered
            await all_have(sent, wait + 5)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.monotonic() - started

    sent_keys = {load.key(n) for n in range(sent)}
    latencies = [r[k] - t for k, t in acked.items() for r in received if k in r]
    missed = sum(1 for k in acked for r in received if k not in r)
    strangers = sum(len(set(r) - sent_keys) for r in received)
    ms = [x * 1000 for x in latencies]
    return {
        "readers": readers,
        "wait_s": wait,
        "events_sent": sent,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "deliveries": len(latencies),
        "p50_ms": round(percentile(ms, 50), 2) if ms else None,
        "p90_ms": round(percentile(ms, 90), 2) if ms else None,
        "p99_ms": round(percentile(ms, 99), 2) if ms else None,
        "max_ms": round(max(ms), 2) if ms else None,
        "min_ms": round(min(ms), 2) if ms else None,
        "over_100ms": sum(1 for x in ms if x > 100),
        "over_1s": sum(1 for x in ms if x > 1000),
        "before_201": sum(1 for x in ms if x < 0),
        "missed": missed,
        "duplicates": sum(duplicates),
        "strangers": strangers,
        "reader_answers": sum(answers),
        "empty_answers": sum(empty_answers),
        "stalled": stalled[:20],
        "pause_ms": list(pause_ms),
        "seconds": round(elapsed, 1),
        "errors": errors[:20],
        "exactly_once": missed == 0 and sum(duplicates) == 0 and strangers == 0
        and len(acked) == sent and not errors,
    }


def measure_long_poll(url: str, workdir: Path, args: argparse.Namespace, run_id: str) -> dict[str, Any]:
    attempts = iter(range(100))

    def once() -> dict[str, Any]:
        svc = service(url, workdir, args.workers)
        try:
            asyncio.run(throughput.checkpoint(url))
            figure = asyncio.run(long_poll(svc.base_url, f"poll-{run_id}-{next(attempts)}", args.readers,
                                           args.poll_events, args.wait, tuple(args.poll_pause_ms),
                                           args.poll_deadline, args.rng_seed))
        finally:
            svc.terminate()
            svc.cleanup()
        figure["workers"] = args.workers
        return figure

    return guarded("long_poll", args, once)


# -- 3. NOTIFY on the write path -------------------------------------------------


def measure_notify(url: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for i in range(args.notify_pairs):
        for mode in ("on", "off"):
            def once(mode: str = mode) -> dict[str, Any]:
                svc = service(url, workdir, args.workers, READ_NOTIFY=mode)
                try:
                    return throughput.run_point(url, svc.port, args.workers, True, args.connections, args.duration,
                                                0.5, True, workdir, svc.proc)
                finally:
                    svc.terminate()
                    svc.cleanup()

            point = guarded(f"notify {mode}", args, once)
            point.update(read_notify=mode, order=2 * i + (mode == "off"))
            log(f"notify: {orjson.dumps(point).decode()}")
            runs[mode].append(point)

    def med(mode: str, name: str) -> float:
        return round(statistics.median(p[name] for p in runs[mode]), 1)

    on_rps, off_rps = med("on", "rps"), med("off", "rps")
    on_cpu, off_cpu = med("on", "cpu_us_per_request"), med("off", "cpu_us_per_request")
    return {
        "connections": args.connections,
        "workers": args.workers,
        "batching": True,
        "duration_s": args.duration,
        "runs_each": args.notify_pairs,
        "rps_on": on_rps,
        "rps_off": off_rps,
        "cost_pct": round((off_rps - on_rps) / off_rps * 100, 1),
        "p99_ms_on": med("on", "p99_ms"),
        "p99_ms_off": med("off", "p99_ms"),
        "cpu_us_per_request_on": on_cpu,
        "cpu_us_per_request_off": off_cpu,
        "cpu_cost_pct": round((on_cpu - off_cpu) / off_cpu * 100, 1),
        "rows_ok": all(p["rows_ok"] and not p["other_answers"] for ps in runs.values() for p in ps),
        "runs": [{k: p.get(k) for k in ("order", "read_notify", "rps", "p50_ms", "p99_ms", "cpu_us_per_request",
                                        "rows_ok", "other_answers", "quiet", "discarded_for_tests")}
                 for p in sorted(runs["on"] + runs["off"], key=lambda p: p["order"])],
    }


# -- 4. ingest while a purge runs --------------------------------------------------


def ingest_point(url: str, svc: Service, args: argparse.Namespace, workdir: Path,
                 during: list[str] | None) -> dict[str, Any]:
    """bench/throughput.run_point's measurement, with ``during`` (a command) started right before wrk."""
    tenant = f"bench-{uuid.uuid4().hex[:10]}"
    total = int(20000 * args.duration * 1.2)
    _, plan = build_plan(total=total, unique=total // 2, tenant=tenant, secret=SECRET)
    pids = throughput.worker_pids(svc.proc, args.workers)
    asyncio.run(throughput.checkpoint(url))
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

    cpu_before = throughput.cpu_seconds(pids)
    measured = throughput.drive_with_wrk(svc.port, plan, tenant, args.connections, args.duration, workdir,
                                         before_start=start)
    wrk_s = time.monotonic() - marks["started"]
    job, started = (jobs[0] if jobs else None), marks["started"]
    cpu_us = (throughput.cpu_seconds(pids) - cpu_before) / max(measured["completed"], 1) * 1e6
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
    asyncio.run(throughput.settle_tail(svc.port, plan, measured["sent"], args.connections))
    sent_events = {plan[i % len(plan)].event for i in range(measured["sent"])}
    rows = asyncio.run(throughput.count_rows(url, tenant))
    return {
        "rps": round(measured["rps"], 1),
        "p50_ms": round(measured["p50_ms"], 2),
        "p99_ms": round(measured["p99_ms"], 2),
        "cpu_us_per_request": round(cpu_us, 1),
        "wrk_s": round(wrk_s, 1),
        "wal_mb": wal_mb,
        "rows_ok": rows == len(sent_events),
        "other_answers": measured["other"],
        **job_figures,
    }


def measure_purge(url: str, workdir: Path, args: argparse.Namespace, old_tenant: str) -> dict[str, Any]:
    before = asyncio.run(table_facts(url))
    svc = service(url, workdir, args.workers)
    try:
        no_purge = guarded("purge: without", args, lambda: ingest_point(url, svc, args, workdir, None))
        log(f"purge: without a purge {orjson.dumps(no_purge).decode()}")
        between = asyncio.run(table_facts(url))
        # One shot: the purge cannot be measured again without seeding again.
        with_purge = guarded("purge: while purging", args, lambda: ingest_point(
            url, svc, args, workdir, [*cli_command(), "purge", "--older-than", "7d"]), retries=0)
        log(f"purge: while purging {orjson.dumps(with_purge).decode()}")
    finally:
        svc.terminate()
        svc.cleanup()
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


# -- 5. export's memory ------------------------------------------------------------


def export_run(url: str, tenant: str, workdir: Path, timeout: float) -> dict[str, Any]:
    """``codex-ingest export --tenant T > /dev/null``: its time and peak RSS.

    The peak is GNU time's %M (the export's own ru_maxrss, taken from a tiny
    parent: ru_maxrss of a child forked straight from this bench would
    include this process's own size from before the exec), and VmHWM polled
    every 20 ms as a check (or alone, without /usr/bin/time).
    """
    err_path, time_path = workdir / f"export-{tenant}.err", workdir / f"export-{tenant}.time"
    command = [*cli_command(), "export", "--tenant", tenant]
    timed = Path("/usr/bin/time").exists()
    if timed:
        command = ["/usr/bin/time", "-f", "%M %e", "-o", str(time_path), *command]
    with open(os.devnull, "wb") as devnull, err_path.open("wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(command, env={**os.environ, "DATABASE_URL": url}, stdout=devnull, stderr=err)
        polled_hwm_kb, samples = 0, 0
        while proc.poll() is None:
            try:
                pids = (Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split() if timed
                        else [str(proc.pid)])
                for pid in pids:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            polled_hwm_kb = max(polled_hwm_kb, int(line.split()[1]))
                            samples += 1
            except OSError:
                pass
            if time.monotonic() - started > timeout:
                proc.kill()
            time.sleep(0.02)
        elapsed = time.monotonic() - started
    figure: dict[str, Any] = {
        "exit": proc.returncode,
        "seconds": round(elapsed, 2),
        "polled_vmhwm_mb": round(polled_hwm_kb / 1024, 1),
        "rss_samples": samples,
        "stderr": err_path.read_text(errors="replace").strip()[-300:],
    }
    if timed:
        max_kb, _ = time_path.read_text().split()[-2:]
        figure["peak_rss_mb"] = round(int(max_kb) / 1024, 1)
        figure["peak_rss_from"] = "/usr/bin/time %M"
    else:
        figure["peak_rss_mb"] = figure["polled_vmhwm_mb"]
        figure["peak_rss_from"] = "VmHWM polled"
    return figure


def export_check(url: str, tenant: str, expected: set[int], timeout: float) -> dict[str, Any]:
    """Export once into a pipe (not timed): every event once, ids as stored."""
    proc = subprocess.Popen([*cli_command(), "export", "--tenant", tenant],
                            env={**os.environ, "DATABASE_URL": url}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    ids = [orjson.loads(line)["event_id"] for line in proc.stdout]
    proc.wait(timeout)
    return {"exit": proc.returncode, "lines": len(ids), "distinct": len(set(ids)), "equal_to_stored": set(ids) == expected}


def measure_export(url: str, workdir: Path, args: argparse.Namespace, tenants: dict[int, str]) -> dict[str, Any]:
    figure: dict[str, Any] = {}
    for size, tenant in sorted(tenants.items()):
        def once(tenant: str = tenant) -> dict[str, Any]:
            asyncio.run(throughput.checkpoint(url))
            return export_run(url, tenant, workdir, args.export_timeout)

        run = guarded(f"export {size:,}", args, once)
        run["events_per_s"] = round(size / run["seconds"])
        log(f"export {size:,}: {orjson.dumps(run).decode()}")
        figure[str(size)] = {"events": size, **run}
    small = min(tenants)
    figure["check"] = export_check(url, tenants[small], asyncio.run(fetch_ids(url, tenants[small])),
                                   args.export_timeout)
    figure["check"]["events"] = small
    sizes = sorted(tenants)
    figure["rss_ratio_largest_to_smallest"] = round(
        figure[str(sizes[-1])]["peak_rss_mb"] / figure[str(sizes[0])]["peak_rss_mb"], 2)
    figure["ok"] = all(figure[str(s)]["exit"] == 0 for s in sizes) and figure["check"]["exit"] == 0 \
        and figure["check"]["equal_to_stored"] and figure["check"]["lines"] == small
    return figure


# -- the run -------------------------------------------------------------------------


def tool_versions(url: str) -> dict[str, str]:
    async def pg() -> str:
        conn = await asyncpg.connect(url)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()
    return {"postgres": asyncio.run(pg()), "wrk": wrk[0] if wrk else "?", "python": sys.version.split()[0]}


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
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "read_side.json")
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
    if shutil.which("wrk") is None and parts & {"notify", "purge"}:
        parser.error("wrk is not installed (apt-get install wrk); it drives the ingest of parts notify and purge")
    os.environ.pop("RETENTION", None)  # the service must not purge by itself

    run_id = uuid.uuid4().hex[:8]
    started = time.monotonic()
    _BUDGET["deadline"] = started + args.budget
    workdir = Path(tempfile.mkdtemp(prefix="codex-read-side-"))
    server, url = throughput.start_database(workdir)
    result: dict[str, Any] = {"bench": "read_side", "run_id": run_id, "cpus": os.cpu_count(),
                              "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)}}
    try:
        result["versions"] = tool_versions(url)
        result["tree"] = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                        cwd=Path(__file__).resolve().parent).stdout.strip()
        old_tenant, small_tenant = f"old-{run_id}", f"small-{run_id}"
        if parts & {"export", "purge"}:
            # First, so the old rows have the lowest ids, as old rows do: the purge walks ids upwards.
            log(f"seeding {args.purge_rows:,} events received 30 days ago ({old_tenant}) "
                f"and {args.export_small_events:,} of now ({small_tenant})")
            seeded = {
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
    finally:
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    result["total_s"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
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


if __name__ == "__main__":
    raise SystemExit(main())
