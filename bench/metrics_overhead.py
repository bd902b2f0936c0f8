"""What the HTTP metrics middleware costs per request, in microseconds.

    python -m bench.metrics_overhead [--requests 50000]

Runs one trivial handler four ways, in process (no sockets, no database):
bare; behind aiohttp-prometheus-exporter's own middleware (which the
service used to run, and which labels the client address); and behind the
service's codex_ingest.telemetry.http_metrics middleware, which records the same
series with cached label children, with the client address hidden (the
default) and labelled (METRICS_REMOTE_LABEL=on). Also reports how many
series each creates for a given number of distinct client addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiohttp_prometheus_exporter.middleware import prometheus_middleware_factory
from prometheus_client import CollectorRegistry, generate_latest

from bench.output import print_json
from codex_ingest.telemetry.http_metrics import HttpMetrics


async def ok(request: web.Request) -> web.Response:
    return web.Response(status=201)


def chain(middlewares: list, handler):
    for mw in reversed(middlewares):
        handler = (lambda m, h: (lambda r: m(r, h)))(mw, handler)
    return handler


def make_requests(count: int, clients: int) -> list[web.Request]:
    app = web.Application()
    app.router.add_post("/pos/{source}/ingest", ok)
    out = []
    for i in range(count):
        transport_peer = (f"10.{(i % clients) // 65536}.{(i % clients) // 256 % 256}.{i % clients % 256}", 40000)
        req = make_mocked_request("POST", "/pos/square/ingest")
        req._transport_peername = transport_peer  # type: ignore[attr-defined]
        # A real route, so the exporter labels the path template as in service.
        req._match_info = asyncio.run(app.router.resolve(req))  # type: ignore[attr-defined]
        out.append(req)
    return out


async def time_chain(handler, requests: list[web.Request]) -> float:
    started = time.perf_counter()
    for req in requests:
        await handler(req)
    return (time.perf_counter() - started) / len(requests) * 1e6


async def measure(batches: list[list[web.Request]], n: int, clients: int) -> dict:
    # A fresh batch per variant: a request caches .remote once read.
    bare = await time_chain(ok, batches[0])
    exporter_registry = CollectorRegistry()
    exporter = chain([prometheus_middleware_factory(registry=exporter_registry)], ok)
    exporter_us = await time_chain(exporter, batches[1])
    hidden_registry = CollectorRegistry()
    hidden = chain([HttpMetrics(hidden_registry, label_remote=False).middleware], ok)
    hidden_us = await time_chain(hidden, batches[2])
    labelled_registry = CollectorRegistry()
    labelled = chain([HttpMetrics(labelled_registry, label_remote=True).middleware], ok)
    labelled_us = await time_chain(labelled, batches[3])

    def series(registry: CollectorRegistry) -> int:
        return sum(1 for line in generate_latest(registry).decode().splitlines() if line and not line.startswith("#"))

    return {
        "requests": n,
        "distinct_clients": clients,
        "bare_us": round(bare, 2),
        "exporter_middleware_us": round(exporter_us - bare, 2),
        "service_remote_hidden_us": round(hidden_us - bare, 2),
        "service_remote_labelled_us": round(labelled_us - bare, 2),
        "series_exporter_middleware": series(exporter_registry),
        "series_service_remote_hidden": series(hidden_registry),
        "series_service_remote_labelled": series(labelled_registry),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50000)
    parser.add_argument("--clients", type=int, default=1000, help="distinct client addresses to simulate")
    args = parser.parse_args()
    batches = [make_requests(args.requests, args.clients) for _ in range(4)]
    print_json(asyncio.run(measure(batches, args.requests, args.clients)))


if __name__ == "__main__":
    main()
