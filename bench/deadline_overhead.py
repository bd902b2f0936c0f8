"""What the connection guard (codex_ingest/web/connection.py: the request-head
deadline and JSON parse errors) costs per request.

    python -m bench.deadline_overhead [--duration 5] [--connections 32]

Serves one bare handler (read the body, answer 201) on uvloop in a child
process, once with aiohttp's own AppRunner and once with ServiceRunner,
drives each with wrk (keep-alive, and a new connection per request, where
the head timer is armed once per connection), and prints one JSON line per
point: {runner, keepalive, rps, cpu_us_per_request}. Needs wrk.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys

from bench.local import cpu_seconds, free_port
from bench.output import print_json
from bench.service import wait_answering
from bench.wrk import wrk_installed


def serve(runner_name: str, port: int) -> None:
    import asyncio

    import uvloop
    from aiohttp import web

    from codex_ingest.settings import Settings
    from codex_ingest.web import appkeys as keys
    from codex_ingest.web.connection import ServiceRunner

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b'{"status":"accepted"}', status=201, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app[keys.SETTINGS] = Settings(webhook_secret="x")
        app.router.add_route("*", "/x", handler)
        runner = ServiceRunner(app, access_log=None) if runner_name == "service" else web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        await asyncio.Event().wait()

    uvloop.run(main())


def point(runner_name: str, keepalive: bool, duration: int, connections: int) -> dict[str, object]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.deadline_overhead", "--serve", runner_name, str(port)])
    try:
        wait_answering(f"http://127.0.0.1:{port}/x", proc, f"the {runner_name} server", timeout=10, every=0.1)
        before = cpu_seconds([proc.pid])
        args = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", f"http://127.0.0.1:{port}/x"]
        if not keepalive:
            args[1:1] = ["-H", "Connection: close"]
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
        used = cpu_seconds([proc.pid]) - before
        requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        return {
            "runner": runner_name,
            "keepalive": keepalive,
            "rps": round(requests / duration),
            "cpu_us_per_request": round(used / requests * 1e6, 1),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--serve", nargs=2, metavar=("RUNNER", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    if not wrk_installed():
        sys.exit("bench.deadline_overhead needs wrk (apt-get install wrk)")
    for keepalive in (True, False):
        for runner_name in ("aiohttp", "service"):
            print_json(point(runner_name, keepalive, args.duration, args.connections))


if __name__ == "__main__":
    main()
