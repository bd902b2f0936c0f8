"""5. export: peak RSS (os.wait4's ru_maxrss, and VmHWM polled) and time of
``codex-ingest export --tenant T > /dev/null`` over 1M and 100k events."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

from bench.database import checkpoint
from bench.local import children, status_kb
from bench.output import log
from bench.read_side.quiet import guarded
from bench.read_side.seeding import fetch_ids
from bench.service import cli_command


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
                for pid in children(proc.pid) if timed else [proc.pid]:
                    if (hwm_kb := status_kb(pid, "VmHWM")) is not None:
                        polled_hwm_kb = max(polled_hwm_kb, hwm_kb)
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
            asyncio.run(checkpoint(url))
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
