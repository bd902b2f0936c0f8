"""aiohttp's own floor on this machine: what serving the same requests costs
with nothing of the service in the way.

    python -m bench.floor [--connections 64] [--duration 10]

Serves a bare aiohttp handler on uvloop (read the body, answer 201 with a
small JSON body; no middlewares, no verification, no database) in one
process, drives it with wrk and the same signed plan and Lua script as
bench.throughput, and prints {rps, p50_ms, p99_ms, cpu_us_per_request}.
Compare cpu_us_per_request with bench.throughput's: the difference is
what the service itself spends per request.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.local import cpu_seconds, free_port
from bench.output import log, print_json
from bench.plan import build_plan
from bench.service import SECRET, wait_answering
from bench.wrk import drive_with_wrk, rate_and_latency, wrk_installed

_ACCEPTED = b'{"status":"accepted","event_id":1}'


def serve(port: int) -> None:
    import uvloop
    from aiohttp import web

    async def ingest(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=_ACCEPTED, status=201, content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/pos/{source}/ingest", ingest)
    app.router.add_get("/healthz", healthz)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def measure(connections: int, duration: int) -> dict:
    """Serve the bare handler in a child process, drive it with wrk, and
    return {connections, rps, p50_ms, p99_ms, cpu_us_per_request}."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.floor", "--serve", str(port)])
    workdir = Path(tempfile.mkdtemp(prefix="codex-floor-"))
    try:
        wait_answering(f"http://127.0.0.1:{port}/healthz", proc, "the bare server", timeout=30, every=0.1)
        _, plan = build_plan(total=100_000, unique=50_000, tenant="floor", secret=SECRET)
        before = cpu_seconds([proc.pid])
        measured = drive_with_wrk(port, plan, "floor", connections, duration, workdir)
        cpu_us = (cpu_seconds([proc.pid]) - before) / max(measured["completed"], 1) * 1e6
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "connections": connections,
        **rate_and_latency(measured),
        "cpu_us_per_request": round(cpu_us, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the child process: serve on this port
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    if not wrk_installed():
        log("floor: needs wrk (apt-get install wrk)")
        return 2
    print_json(measure(args.connections, args.duration))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
