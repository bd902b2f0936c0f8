"""PgBouncer's cost: the service's throughput through PgBouncer (transaction
pooling) against a direct connection to PostgreSQL, in one run.

    python -m bench.pgbouncer_cost [--duration 8] [--rounds 2] [--connections 64] [--out FILE]

On one embedded PostgreSQL, and one pgbouncer (a copy of
deploy/pgbouncer/pgbouncer.ini: pool_mode = transaction, its own port on
127.0.0.1, auth_type = trust), it serves codex-ingest (1 worker, batching
on) in three modes and drives each with wrk and bench/wrk_plan.lua through
bench/point.py's run_point, as bench.throughput does (which also checks that
the rows stored equal the distinct events sent):

* direct           DATABASE_URL straight to PostgreSQL, asyncpg's statement cache on (100, the default)
* direct_no_cache  the same with DB_STATEMENT_CACHE_SIZE=0: the part of the cost that is the cache
* pgbouncer        DATABASE_URL through PgBouncer, DB_STATEMENT_CACHE_SIZE=0 (PgBouncer < 1.21 needs it)

The modes are interleaved (direct, direct_no_cache, pgbouncer, direct, ...)
for --rounds rounds, because this machine's speed drifts over a run; each
figure is the median of its rounds, every round kept under "runs". It
prints one JSON document: the modes, and "cost": pgbouncer's rps and p99
as ratios of direct's (and of direct_no_cache's, the hop alone).
pgbouncer_cpu_us_per_request is PgBouncer's own CPU per answered request
(measured around the whole point, so slightly over).

What runs PgBouncer is in bench/pgbouncer.py (``pgbouncer(url)``) and
bench/daemon.py (``Daemon``, a process in a session of its own that is always
stopped with its whole group); tests/ops/scale_out.py imports them from here.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import orjson

from bench.daemon import binary
from bench.database import embedded_database
from bench.local import cpu_seconds, free_port
from bench.output import log, write_json
from bench.pgbouncer import pgbouncer
from bench.point import run_point
from bench.service import start_service, stop_service
from bench.wrk import wrk_or_python

MODES = ("direct", "direct_no_cache", "pgbouncer")
_MEDIANS = ("rps", "p50_ms", "p99_ms", "cpu_us_per_request", "pgbouncer_cpu_us_per_request")


def summarize(points: list[dict[str, Any]]) -> dict[str, Any]:
    """One mode's figures: the median of its rounds, every round kept."""
    summary: dict[str, Any] = {
        name: round(statistics.median(p[name] for p in points), 2) for name in _MEDIANS if name in points[0]
    }
    summary["rows_ok"] = all(p["rows_ok"] for p in points)
    summary["other_answers"] = sum(p["other_answers"] for p in points)
    summary["runs"] = [{k: p[k] for k in ("round", "rps", "p99_ms", "cpu_us_per_request", "rows_ok")} for p in points]
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pgbouncer_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=64, help="HTTP connections (wrk)")
    parser.add_argument("--duration", type=int, default=8, help="seconds per point")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three modes, interleaved (at least 2)")
    parser.add_argument("--duplicates", type=float, default=0.5, help="share of requests that repeat an event")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: this machine drifts, one round of each proves little")
    if binary("pgbouncer") is None:
        parser.error("pgbouncer is not installed (apt-get install pgbouncer)")
    use_wrk = wrk_or_python("pgbouncer_cost")

    points: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with embedded_database("codex-pgbouncer-cost-") as (_, url, workdir), pgbouncer(url) as bouncer:
        assert bouncer.daemon.proc is not None
        for round_ in range(1, args.rounds + 1):
            for mode in MODES:
                service_url = bouncer.url if mode == "pgbouncer" else url
                cache = "100" if mode == "direct" else "0"
                port = free_port()
                proc = start_service(service_url, port, 1, True, {"DB_STATEMENT_CACHE_SIZE": cache})
                try:
                    bouncer_cpu = cpu_seconds([bouncer.daemon.proc.pid])
                    # Checkpoints and row counts go to PostgreSQL directly (url).
                    point = run_point(url, port, 1, True, args.connections, args.duration,
                                      args.duplicates, use_wrk, workdir, proc)
                    bouncer_cpu = cpu_seconds([bouncer.daemon.proc.pid]) - bouncer_cpu
                finally:
                    stop_service(proc)
                point.update(mode=mode, round=round_, statement_cache_size=int(cache))
                if mode == "pgbouncer":
                    answered = max(point["rps"] * args.duration, 1)
                    point["pgbouncer_cpu_us_per_request"] = round(bouncer_cpu / answered * 1e6, 1)
                log(f"round {round_}, {mode}: {orjson.dumps(point).decode()}")
                points[mode].append(point)

    modes = {mode: summarize(of_mode) for mode, of_mode in points.items()}
    direct, no_cache, bounced = modes["direct"], modes["direct_no_cache"], modes["pgbouncer"]
    result = {
        "connections": args.connections,
        "workers": 1,
        "batching": True,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "load_generator": "wrk" if use_wrk else "python",
        "modes": modes,
        "cost": {
            # Through PgBouncer (with the statement cache off, as it needs) against the default direct setup.
            "rps_ratio": round(bounced["rps"] / direct["rps"], 3),
            "p99_ratio": round(bounced["p99_ms"] / direct["p99_ms"], 3),
            "rps_ratio_per_round": [
                round(b["rps"] / d["rps"], 3) for b, d in zip(points["pgbouncer"], points["direct"], strict=True)
            ],
            # The two parts: turning asyncpg's statement cache off, and the hop through PgBouncer.
            "statement_cache_off_rps_ratio": round(no_cache["rps"] / direct["rps"], 3),
            "hop_rps_ratio": round(bounced["rps"] / no_cache["rps"], 3),
            "hop_p99_ratio": round(bounced["p99_ms"] / no_cache["p99_ms"], 3),
        },
    }
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    if args.out is not None:
        write_json(args.out, result)
    if not all(m["rows_ok"] and not m["other_answers"] for m in modes.values()):
        log("FAIL: rows stored differ from distinct events sent, or unexpected answers")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
