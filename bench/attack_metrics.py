"""What /metrics costs ingest under attack (issue 18), against each given tree's ``codex-ingest serve``.

    python -m bench.attack_metrics --tree before=/tmp/base-18-metrics --tree after=. \\
        [--rounds 3] [--duration 8] [--rate 150] [--scrapers 8] [--workers 2] [--out FILE]

Each tree is served with its own code (cwd and PYTHONPATH set to it, and
``codex_ingest.__file__`` checked to be there), on one embedded PostgreSQL,
127.0.0.1 only: once as it comes (``open``) and, if the tree knows
METRICS_TOKEN, once with it (``token``). Three phases:

1. ``fresh``: signed single events at ``--rate`` a second (open loop, latency
   from each request's due time, so queueing counts) to source ``loadgen``
   for ``--duration`` s, alone (``idle``) or while ``--scrapers`` connections
   loop on GET /metrics without a token (``flood``) or with it
   (``flood_auth``); ingest p50/p99, scrapes a second and their statuses,
   and the workers' CPU seconds a second. Points alternate between the
   services within a round and rotate between rounds, so this machine's
   drift falls on all of them.
2. ``labels``: 260 unsigned requests to ``/pos/<8000 letters>/ingest``, then
   one signed event to ``square``: /metrics' size before and after, how many
   source labels it has, and whether ``square`` has its own.
3. ``inflated``: phase 1 again, on what phase 2 left.

One JSON line per point on stdout; ``--out`` writes them all with a summary
(medians over rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import string
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from bench.database import embedded_database
from bench.local import cpu_seconds
from bench.output import log, print_json, write_json
from bench.plan import signed_headers
from bench.python_load import percentile
from bench.service import serving_tree, tree_env, tree_package, worker_pids

SECRET = "bench-attack-metrics-secret"
METRICS_TOKEN = "bench-metrics-token-0123456789"
LABEL_ATTACK_REQUESTS = 260
LONG_NAME_LETTERS = 8000


# -- the services ------------------------------------------------------------------


def knows_metrics_token(tree: Path) -> bool:
    """The tree's own codex_ingest is what ``serve`` imports there (else exit), and whether it has METRICS_TOKEN."""
    tree_package(tree)
    code = "from codex_ingest.settings import Settings; print('metrics_token' in Settings.__dataclass_fields__)"
    return subprocess.run([sys.executable, "-c", code], cwd=tree, env=tree_env(tree, {}),
                          capture_output=True, text=True, check=True).stdout.strip() == "True"


@contextlib.contextmanager
def serving(tree: Path, database_url: str, workers: int, env: dict[str, str]) -> Iterator[tuple[str, list[int]]]:
    """``serve`` from ``tree`` on a free port until the block ends: (base URL, worker pids)."""
    service_env = tree_env(tree, {"DATABASE_URL": database_url, "WEBHOOK_SECRET": SECRET, "HOST": "127.0.0.1",
                                  "LOG_LEVEL": "WARNING", **env})
    with serving_tree(tree, service_env, workers) as (proc, port):
        yield f"http://127.0.0.1:{port}", worker_pids(proc, workers)


# -- the flood: a child process of its own, so its reading does not delay the load ----------


async def flood(url: str, connections: int, token: str | None) -> dict[str, Any]:
    """``connections`` loops on GET /metrics until stdin closes; their count, statuses and bytes."""
    statuses: Counter[str] = Counter()
    received = 0
    stop = asyncio.Event()
    loop, stdin = asyncio.get_running_loop(), sys.stdin.fileno()

    def on_stdin() -> None:
        if not os.read(stdin, 4096):  # closed: the parent's measurement is over
            loop.remove_reader(stdin)
            stop.set()

    loop.add_reader(stdin, on_stdin)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as http:

        async def one() -> None:
            nonlocal received
            while not stop.is_set():
                async with http.get(f"{url}/metrics", headers=auth) as resp:
                    received += len(await resp.read())
                    statuses[str(resp.status)] += 1

        print("started", flush=True)
        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(connections)))
    elapsed = time.monotonic() - started
    return {"scrapes_per_s": round(sum(statuses.values()) / elapsed, 1), "statuses": dict(statuses),
            "mb_per_s": round(received / elapsed / 1e6, 2)}


@contextlib.contextmanager
def flooding(url: str, connections: int, token: str | None) -> Iterator[dict[str, Any]]:
    """The flood runs while the block does; the dict holds its figures afterwards."""
    env = {**os.environ, **({"BENCH_METRICS_TOKEN": token} if token else {})}  # a token stays out of argv
    proc = subprocess.Popen([sys.executable, "-m", "bench.attack_metrics", "--flood", url, str(connections)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    figures: dict[str, Any] = {}
    try:
        if proc.stdout.readline().strip() != b"started":
            raise RuntimeError("the flood did not start")
        yield figures
    finally:
        proc.stdin.close()
        figures.update(orjson.loads(proc.stdout.read() or b"{}"))
        proc.wait(30)


# -- the signed load ------------------------------------------------------------------------


async def signed_load(url: str, rate: float, duration: float, source: str) -> dict[str, Any]:
    """Signed single events at ``rate`` a second for ``duration`` s; latency from each one's due time."""
    run = uuid.uuid4().hex[:10]
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256),
                                     timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def one(n: int, due: float) -> None:
            body = orjson.dumps({"type": "payment.updated", "bench": f"{run}-{n}"})
            try:
                async with http.post(f"{url}/pos/{source}/ingest", data=body,
                                     headers=signed_headers(SECRET.encode(), body, "bench-attack", f"{run}-{n}")) as resp:
                    await resp.read()
                    statuses[str(resp.status)] += 1
            except (TimeoutError, aiohttp.ClientError) as exc:
                statuses[type(exc).__name__] += 1
            latencies.append(time.monotonic() - due)

        start = time.monotonic()
        tasks = []
        for n in range(int(rate * duration)):
            due = start + n / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.ensure_future(one(n, due)))
        await asyncio.gather(*tasks)
    latencies.sort()
    return {"requests": len(latencies), "statuses": dict(statuses),
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 1), "p99_ms": round(percentile(latencies, 0.99) * 1000, 1)}


def point(service: dict[str, Any], flood_kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement: the signed load, with or without the flood, and the workers' CPU meanwhile."""
    pids = service["pids"]
    cpu_before = cpu_seconds(pids)
    began = time.monotonic()
    if flood_kind == "idle":
        load, flood_figures = asyncio.run(signed_load(service["url"], args.rate, args.duration, "loadgen")), {}
    else:
        token = METRICS_TOKEN if flood_kind == "flood_auth" else None
        with flooding(service["url"], args.scrapers, token) as flood_figures:
            load = asyncio.run(signed_load(service["url"], args.rate, args.duration, "loadgen"))
    elapsed = time.monotonic() - began
    return {"tree": service["tree"], "config": service["config"], "flood": flood_kind, **load,
            "flood_figures": flood_figures, "worker_cpu_per_s": round((cpu_seconds(pids) - cpu_before) / elapsed, 2)}


# -- the label attack -------------------------------------------------------------------------


def scrape(url: str, token: str | None) -> str:
    import urllib.request

    request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return resp.read().decode()


def events_total(text: str) -> dict[tuple[str, str], float]:
    return {(s.labels["source"], s.labels["outcome"]): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "codex_ingest_events_total"}


async def label_attack(url: str, token: str | None) -> dict[str, Any]:
    rng = random.Random(18)
    size_before = len(scrape(url, token))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as http:

        async def post(source: str, body: bytes, headers: dict[str, str]) -> int:
            async with http.post(f"{url}/pos/{source}/ingest", data=body, headers=headers) as resp:
                return resp.status

        unsigned = {"Content-Type": "application/json", "X-Tenant-Id": "bench-attack", "X-Signature": "sha256=" + "0" * 64}
        names = ["".join(rng.choices(string.ascii_letters, k=LONG_NAME_LETTERS)) for _ in range(LABEL_ATTACK_REQUESTS)]
        statuses = Counter(str(s) for s in await asyncio.gather(*(post(name, b"{}", unsigned) for name in names)))
        body = orjson.dumps({"type": "payment.updated", "bench": uuid.uuid4().hex})
        square = await post("square", body, signed_headers(SECRET.encode(), body, "bench-attack", uuid.uuid4().hex))
    # Until a rendering shows square's event (under its label or "_other"): METRICS_CACHE_SECONDS may hold one back.
    deadline = time.monotonic() + 30
    while True:
        text = scrape(url, token)
        counted = events_total(text)
        if counted.get(("square", "accepted"), 0) + counted.get(("_other", "accepted"), 0) >= 1 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    return {"attack_statuses": dict(statuses), "square_status": square, "metrics_bytes_before": size_before,
            "metrics_bytes_after": len(text), "source_labels": len({s for s, _ in counted}),
            "square_has_its_label": counted.get(("square", "accepted"), 0) >= 1,
            "longest_label": max((len(s) for s, _ in counted), default=0)}


# -- the run --------------------------------------------------------------------------------


def summary(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for p in points:
        if "flood" in p:
            groups.setdefault((p["phase"], p["tree"], p["config"], p["flood"]), []).append(p)
    out = []
    for (phase, tree, config, flood_kind), ps in groups.items():
        out.append({"phase": phase, "tree": tree, "config": config, "flood": flood_kind, "rounds": len(ps),
                    "p50_ms": statistics.median(p["p50_ms"] for p in ps), "p99_ms": statistics.median(p["p99_ms"] for p in ps),
                    "p50_ms_range": [min(p["p50_ms"] for p in ps), max(p["p50_ms"] for p in ps)],
                    "scrapes_per_s": statistics.median(p["flood_figures"].get("scrapes_per_s", 0) for p in ps),
                    "worker_cpu_per_s": statistics.median(p["worker_cpu_per_s"] for p in ps)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.attack_metrics", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", metavar="NAME=PATH", help="a tree to serve (repeat); default after=.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of signed load per point")
    parser.add_argument("--rate", type=float, default=150.0, help="signed events a second")
    parser.add_argument("--scrapers", type=int, default=8, help="connections looping on GET /metrics")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--flood", nargs=2, metavar=("URL", "CONNECTIONS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood:
        url, connections = args.flood
        print(orjson.dumps(asyncio.run(flood(url, int(connections), os.environ.get("BENCH_METRICS_TOKEN")))).decode())
        return
    trees = [(name, Path(path)) for name, _, path in (t.partition("=") for t in (args.tree or ["after=."]))]
    points: list[dict[str, Any]] = []

    def emit(doc: dict[str, Any]) -> None:
        points.append(doc)
        print_json(doc)

    with embedded_database("codex-attack-metrics-") as (_, url, _), contextlib.ExitStack() as stack:
        services = []
        for name, tree in trees:
            configs: dict[str, dict[str, str]] = {"open": {}}
            if knows_metrics_token(tree):
                configs["token"] = {"METRICS_TOKEN": METRICS_TOKEN}
            for config, env in configs.items():
                base, pids = stack.enter_context(serving(tree, url, args.workers, env))
                services.append({"tree": name, "config": config, "url": base, "pids": pids,
                                 "token": env.get("METRICS_TOKEN")})
        plan = [(s, kind) for s in services
                for kind in (("flood", "flood_auth") if s["token"] else ("idle", "flood"))]
        for phase in ("fresh", "labels", "inflated"):
            if phase == "labels":
                for s in services:
                    log(f"labels: {s['tree']}/{s['config']}")
                    emit({"phase": phase, "tree": s["tree"], "config": s["config"], **asyncio.run(label_attack(s["url"], s["token"]))})
                continue
            for round_ in range(args.rounds):
                order = plan[round_ % len(plan):] + plan[:round_ % len(plan)]
                for s, kind in order:
                    log(f"{phase} round {round_ + 1}: {s['tree']}/{s['config']} {kind}")
                    emit({"phase": phase, "round": round_ + 1, **point(s, kind, args)})
    result = summary(points)
    for row in result:
        print_json({"summary": row})
    if args.out:
        write_json(args.out, {"args": {k: v for k, v in vars(args).items() if k not in ("out", "flood")},
                              "points": points, "summary": result})


if __name__ == "__main__":
    main()
