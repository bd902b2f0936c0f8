"""3. notify: ingest with READ_NOTIFY=on and off (read API on in both),
interleaved on/off/on/off..., wrk at 64 connections, batching on, by
bench/point.py's run_point; medians of each and the cost in percent."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import orjson

from bench.output import log
from bench.point import run_point
from bench.read_side.api import read_api_service
from bench.read_side.quiet import guarded


def measure_notify(url: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for i in range(args.notify_pairs):
        for mode in ("on", "off"):
            def once(mode: str = mode) -> dict[str, Any]:
                with read_api_service(url, workdir, args.workers, READ_NOTIFY=mode) as svc:
                    assert svc.proc is not None
                    return run_point(url, svc.port, args.workers, True, args.connections, args.duration,
                                     0.5, True, workdir, svc.proc)

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
