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
import statistics
from pathlib import Path

import orjson

from bench import floor
from bench.database import checkpoint, embedded_database, pgbench_tps
from bench.local import free_port
from bench.output import log, print_json, write_json
from bench.point import run_point
from bench.service import start_service, stop_service
from bench.wrk import wrk_or_python

HERE = Path(__file__).resolve().parent


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

    use_wrk = wrk_or_python("throughput")

    runs: dict[tuple[int, bool, int], list[dict]] = {}
    with embedded_database("codex-bench-") as (server, url, workdir):
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

    points = [median_point(of_point) for of_point in runs.values()]
    for point in points:
        print_json({k: v for k, v in point.items() if k != "runs"})
    write_json(args.out, points)
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
