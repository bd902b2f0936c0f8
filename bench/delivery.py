"""Push delivery: how fast, how soon, at what cost to ingest, and with a hung neighbour, in one run.

    python -m bench.delivery [--rounds 2] [--events 20000] [--seconds 10] [--rate 500] [--out FILE]

On one embedded PostgreSQL of its own (bench/database.py, migrated by the
working tree), the working tree's ``codex-ingest serve`` (2 workers,
batching on) and a receiver process (bench/receiver.py: checks each
signature, notes the webhook-id and the arrival time, answers 204):

1. **drain**: deliveries per second to one healthy destination, ``parallel``
   and ``ordered`` (100 tenants). --events events are stored by SQL while the
   destination is disabled (1-2 KB bodies from bench/payloads, 1,000 rows a
   transaction) and scheduled; then it is enabled, and the figure is
   events / seconds until the receiver has every one of them. The service's
   CPU (supervisor and workers), the receiver's and the database's are read
   over that window, per delivery.
2. **latency**: from the ingest's 201 (the load generator's clock) to the
   arrival at the receiver (its clock: the same machine's ``time.time()``),
   p50/p99/max, while single signed events are ingested at --rate events/s
   for --seconds (open loop: each request is due at its own time, whatever
   the earlier ones did), with the healthy destination ``alone`` and with a
   second destination that takes the same events and ``hung`` (it never
   answers; timeout 30 s, so every one of its requests stays open).
3. **ingest cost**: bench.point's single-event point (1 worker, batching on,
   64 connections, wrk, half the requests repeats) with delivery ``off`` (no
   destination) and ``on`` (one healthy destination taking every event):
   rps and the worker's CPU per request; on/off within a round.
4. **floor**: bench.floor's bare aiohttp server driven by the same wrk plan,
   so deliveries/s can be read as a ratio of what this machine serves.

Rounds interleave the latency and ingest sides (the order reversed every
other round); each figure is the median over rounds, ratios taken within a
round, with their min and max. One JSON document on stdout (indented in
--out), progress and a table on stderr. Exit 1 when a check fails: an event
not delivered (or delivered unsigned), a delivery recorded in another state,
an ingest answer other than 201, or the service logged an error.

Targets (issue 20; for the bench, never a test): parallel drain >= 0.4x the
floor's requests/s, p99 from 201 to arrival <= 100 ms at 500 events/s, and
ingest's cost of delivery <= 15%.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench import floor
from bench.database import checkpoint, connection, cpu_between, embedded_database, server_cpu
from bench.feed import service_errors
from bench.local import cpu_seconds, free_port
from bench.output import log, print_json, write_json
from bench.plan import build_plan, load_payloads
from bench.point import run_point
from bench.python_load import percentile
from bench.service import SECRET, Service, wait_answering
from bench.wrk import wrk_or_python

WHSEC = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of 24 bytes
TOKEN = "bench-operator-token-0123456789"
WORKERS = 2
TENANTS = 100
SEED_TRANSACTION_ROWS = 1000
LIVE_SOURCE = "live"          # the source the latency side ingests
SINGLE_CONNECTIONS = 64
DRAIN_TIMEOUT = 600.0
SEED_SQL = """
INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, content_type, headers)
SELECT 'drain-' || (n % $4), $1, $2 || n, sha256(b.body), b.body, 'application/json',
       '{"user-agent": "bench.delivery"}'::jsonb
FROM generate_series($3::bigint, $3::bigint + $5 - 1) AS n,
     LATERAL (SELECT ($6::bytea[])[(1 + n % array_length($6::bytea[], 1))::int] AS body) AS b
"""


def destination(name: str, port: int, path: str, **keys: Any) -> str:
    lines = [f"[destinations.{name}]", f'url = "http://127.0.0.1:{port}{path}"', f'secrets = ["{WHSEC}"]',
             "allow_private_network = true"]
    for key, value in keys.items():
        shown = orjson.dumps(value).decode() if not isinstance(value, bool) else str(value).lower()
        lines.append(f"{key} = {shown}")
    return "\n".join(lines) + "\n"


class Bench:
    def __init__(self, args: argparse.Namespace, server: Any, url: str, workdir: Path, receiver_port: int,
                 receiver: subprocess.Popen[bytes]) -> None:
        self.args = args
        self.server = server
        self.url = url
        self.workdir = workdir
        self.receiver_port = receiver_port
        self.receiver = receiver
        self.problems: list[str] = []
        self.services = 0

    # -- pieces ------------------------------------------------------------------------------

    async def start_at_head(self, names: list[str]) -> None:
        """The destinations' positions at the newest event: each point delivers only what it ingests, not
        the events earlier points left in the database (a destination declared anew starts at the
        oldest retained event)."""
        async with connection(self.url) as conn:
            await conn.execute(
                "INSERT INTO destination_state (name, xact, id)"
                " SELECT n, coalesce((SELECT xact FROM events ORDER BY xact DESC, id DESC LIMIT 1), '0'),"
                "        coalesce((SELECT id FROM events ORDER BY xact DESC, id DESC LIMIT 1), 0)"
                " FROM unnest($1::text[]) AS n"
                " ON CONFLICT (name) DO UPDATE SET xact = EXCLUDED.xact, id = EXCLUDED.id", names)

    @contextmanager
    def serving(self, toml: str, workers: int = WORKERS) -> Iterator[Service]:
        names = [line[len("[destinations."):-1] for line in toml.splitlines() if line.startswith("[destinations.")]
        asyncio.run(self.start_at_head(names))
        self.services += 1
        sources = self.workdir / f"sources-{self.services}.toml"
        sources.write_text(toml)
        log_path = self.workdir / f"serve-{self.services}.log"
        service = Service(self.url, free_port(), SECRET, log_path, workers=workers,
                          env={"CODEX_SOURCES": str(sources), "CODEX_API_TOKENS": f"{TOKEN}=*",
                               "LOG_LEVEL": "WARNING", "BATCHING": "on"})
        try:
            service.start()
            yield service
            service.terminate()
        finally:
            service.cleanup()
            errors = service_errors(log_path)
            if errors:
                self.problems.append(f"{log_path.name}: {len(errors)} error lines, first: {errors[0][:300]}")

    def arrivals(self, start: int = 0) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.receiver_port}/arrivals?from={start}", timeout=30) as resp:
            return orjson.loads(resp.read())

    def service_cpu(self, service: Service) -> float:
        return cpu_seconds(service.group())

    def operate(self, service: Service, method: str, path: str) -> Any:
        request = urllib.request.Request(f"{service.base_url}{path}", method=method, data=b"" if method == "POST" else None,
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            return orjson.loads(resp.read())

    def listed(self, service: Service, name: str) -> dict[str, Any]:
        return next(d for d in self.operate(service, "GET", "/destinations")["destinations"] if d["name"] == name)

    def wait(self, predicate: Any, what: str, timeout: float = DRAIN_TIMEOUT, every: float = 0.05) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(every)

    async def states(self, name: str, ids: list[int]) -> dict[str, int]:
        """How many of these events' deliveries to ``name`` are in each state."""
        async with connection(self.url) as conn:
            rows = await conn.fetch("SELECT state, count(*) AS n FROM deliveries"
                                    " WHERE destination = $1 AND event_id = ANY($2::bigint[]) GROUP BY state", name, ids)
        return {r["state"]: r["n"] for r in rows}

    # -- 1. drain ----------------------------------------------------------------------------

    async def seed(self, source: str, events: int) -> list[int]:
        bodies = [orjson.dumps(p) for p in load_payloads()]
        async with connection(self.url) as conn:
            first = 0
            while first < events:
                rows = min(SEED_TRANSACTION_ROWS, events - first)
                # $1 source, $2 key prefix, $3 first n, $4 tenants, $5 rows, $6 bodies
                await conn.execute(SEED_SQL, source, f"{source}-{self.services}-", first, TENANTS, rows, bodies)
                first += rows
            ids = [r["id"] for r in await conn.fetch("SELECT id FROM events WHERE source = $1 AND idempotency_key"
                                                      " LIKE $2", source, f"{source}-{self.services}-%")]
            await conn.execute("VACUUM ANALYZE events")
        await checkpoint(self.url)
        return ids

    def drain(self, mode: str) -> dict[str, Any]:
        name = f"drain-{mode}"
        keys: dict[str, Any] = {"sources": [name], "max_in_flight": self.args.max_in_flight}
        if mode == "ordered":
            keys["ordered"] = True
        with self.serving(destination(name, self.receiver_port, "/ok", **keys)) as service:
            self.operate(service, "POST", f"/destinations/{name}/disable")
            ids = asyncio.run(self.seed(name, self.args.events))
            self.wait(lambda: self.listed(service, name)["lag_events"] == len(ids)
                      and not self.listed(service, name)["scheduler_behind"], "every seeded event scheduled", every=0.5)
            start_count = self.arrivals(10**12)["count"]
            db_before, cpu_before, receiver_before = server_cpu(self.server), self.service_cpu(service), \
                cpu_seconds([self.receiver.pid])
            started = time.monotonic()
            self.operate(service, "POST", f"/destinations/{name}/enable")
            self.wait(lambda: self.arrivals(10**12)["count"] - start_count >= len(ids), f"{name}: every event arrived")
            seconds = time.monotonic() - started
            service_cpu = self.service_cpu(service) - cpu_before
            receiver_cpu = cpu_seconds([self.receiver.pid]) - receiver_before
            db_cpu = cpu_between(db_before, server_cpu(self.server))
            self.wait(lambda: asyncio.run(self.states(name, ids)) == {"delivered": len(ids)}, f"{name}: every delivery recorded",
                      every=0.2)
        got = self.arrivals(start_count)
        delivered = {a[0] for a in got["arrivals"]}
        missing = {f"evt_{i}" for i in ids} - delivered
        if missing or got["bad"]:
            self.problems.append(f"{name}: {len(missing)} events missing, {got['bad']} unsigned")
        n = len(ids)
        return {
            "events": n, "seconds": round(seconds, 2), "deliveries_per_s": round(n / seconds, 1),
            "resent": len(got["arrivals"]) - n,
            "service_cpu_us_per_delivery": round(service_cpu / n * 1e6, 1),
            "receiver_cpu_us_per_delivery": round(receiver_cpu / n * 1e6, 1),
            "db_cpu_us_per_delivery": round(db_cpu / n * 1e6, 1),
        }

    # -- 2. latency --------------------------------------------------------------------------

    async def steady_ingest(self, service: Service, tenant: str) -> dict[int, float]:
        """Single events at --rate a second for --seconds, open loop: event id -> when its 201 came."""
        _, plan = build_plan(total=int(self.args.rate * self.args.seconds), unique=int(self.args.rate * self.args.seconds),
                             tenant=tenant, secret=SECRET)
        url = f"{service.base_url}/pos/{LIVE_SOURCE}/ingest"
        answered: dict[int, float] = {}
        statuses: dict[int, int] = {}
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

            async def one(item: Any) -> None:
                async with session.post(url, data=item.body, headers=item.headers) as resp:
                    doc = await resp.read()
                    at = time.time()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
                    if resp.status == 201:
                        answered[orjson.loads(doc)["event_id"]] = at

            loop = asyncio.get_running_loop()
            start = loop.time()
            tasks = []
            for i, item in enumerate(plan):
                due = start + i / self.args.rate
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(item)))
            await asyncio.gather(*tasks)
        if set(statuses) != {201}:
            self.problems.append(f"steady ingest: answers {statuses}")
        return answered

    def latency(self, side: str, round_: int) -> dict[str, Any]:
        toml = destination("healthy", self.receiver_port, "/ok", sources=[LIVE_SOURCE])
        if side == "hung":
            toml += destination("hung", self.receiver_port, "/hang", sources=[LIVE_SOURCE], timeout_seconds=30)
        with self.serving(toml) as service:
            start_count = self.arrivals(10**12)["count"]
            answered = asyncio.run(self.steady_ingest(service, f"live-{side}-{round_}"))
            wanted = {f"evt_{i}": at for i, at in answered.items()}
            self.wait(lambda: self.arrivals(10**12)["count"] - start_count >= len(wanted), "every event at the receiver",
                      timeout=120)
            hung_in_flight = self.listed(service, "hung")["in_flight"] if side == "hung" else 0
        got = self.arrivals(start_count)
        first: dict[str, float] = {}
        for msg_id, at in got["arrivals"]:
            if msg_id in wanted and msg_id not in first:
                first[msg_id] = at
        missing = set(wanted) - set(first)
        if missing or got["bad"]:
            self.problems.append(f"latency {side}: {len(missing)} events missing, {got['bad']} unsigned")
        ms = sorted((first[i] - wanted[i]) * 1000 for i in first)
        return {"events": len(ms), "rate": self.args.rate, "p50_ms": round(percentile(ms, 0.5), 1),
                "p99_ms": round(percentile(ms, 0.99), 1), "max_ms": round(ms[-1], 1) if ms else None,
                "hung_in_flight": hung_in_flight}

    # -- 3. ingest cost ----------------------------------------------------------------------

    def ingest(self, side: str) -> dict[str, Any]:
        toml = destination("everything", self.receiver_port, "/ok") if side == "on" else ""
        with self.serving(toml, workers=1) as service:
            assert service.proc is not None
            point = run_point(self.url, service.port, 1, True, SINGLE_CONNECTIONS, self.args.seconds, 0.5,
                              self.use_wrk, self.workdir, service.proc, database_cpu=lambda: server_cpu(self.server))
            if side == "on":
                self.wait(lambda: self.listed(service, "everything")["lag_events"] == 0
                          and not self.listed(service, "everything")["scheduler_behind"],
                          "every ingested event delivered", every=0.5)
        if not point["rows_ok"] or point["other_answers"]:
            self.problems.append(f"ingest {side}: rows_ok {point['rows_ok']}, other answers {point['other_answers']}")
        return {k: point[k] for k in ("rps", "p99_ms", "cpu_us_per_request", "db_cpu_us_per_request")}

    use_wrk = True


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    use_wrk = wrk_or_python("bench.delivery")
    with embedded_database("codex-delivery-") as (server, url, workdir):
        receiver_port = free_port()
        receiver = subprocess.Popen([sys.executable, "-m", "bench.receiver", "--port", str(receiver_port),
                                     "--secret", WHSEC])
        try:
            wait_answering(f"http://127.0.0.1:{receiver_port}/arrivals", receiver, "the receiver", timeout=30, every=0.1)
            bench = Bench(args, server, url, workdir, receiver_port, receiver)
            bench.use_wrk = use_wrk
            rounds: list[dict[str, Any]] = []
            for r in range(args.rounds):
                log(f"round {r + 1}/{args.rounds}")
                this: dict[str, Any] = {"round": r + 1}
                order = ("parallel", "ordered") if r % 2 == 0 else ("ordered", "parallel")
                this["drain"] = {mode: bench.drain(mode) for mode in order}
                log(f"  drain {this['drain']}")
                sides = ("alone", "hung") if r % 2 == 0 else ("hung", "alone")
                this["latency"] = {side: bench.latency(side, r) for side in sides}
                log(f"  latency {this['latency']}")
                sides = ("off", "on") if r % 2 == 0 else ("on", "off")
                this["ingest"] = {side: bench.ingest(side) for side in sides}
                log(f"  ingest {this['ingest']}")
                this["floor"] = floor.measure(SINGLE_CONNECTIONS, args.seconds) if use_wrk else None
                log(f"  floor {this['floor']}")
                ingest = this["ingest"]
                this["ratios"] = {
                    "ingest_rps_on_over_off": ingest["on"]["rps"] / ingest["off"]["rps"],
                    "ingest_cpu_on_over_off": ingest["on"]["cpu_us_per_request"] / ingest["off"]["cpu_us_per_request"],
                    "ingest_db_cpu_on_over_off": (ingest["on"]["db_cpu_us_per_request"]
                                                  / ingest["off"]["db_cpu_us_per_request"]),
                    "hung_p99_over_alone": this["latency"]["hung"]["p99_ms"] / max(this["latency"]["alone"]["p99_ms"], 0.1),
                }
                if this["floor"]:
                    for mode in ("parallel", "ordered"):
                        this["ratios"][f"{mode}_over_floor_rps"] = this["drain"][mode]["deliveries_per_s"] / this["floor"]["rps"]
                rounds.append(this)
        finally:
            receiver.terminate()
            receiver.wait(timeout=30)
    return summarize(args, rounds, bench.problems, use_wrk)


def summarize(args: argparse.Namespace, rounds: list[dict[str, Any]], problems: list[str], use_wrk: bool) -> dict[str, Any]:
    def median(path: tuple[str, ...]) -> float:
        values = []
        for r in rounds:
            value: Any = r
            for key in path:
                value = value[key]
            values.append(value)
        return round(statistics.median(values), 1)

    return {
        "bench": "delivery",
        "settings": {"rounds": args.rounds, "events": args.events, "seconds": args.seconds, "rate": args.rate,
                     "workers": WORKERS, "max_in_flight": args.max_in_flight, "tenants": TENANTS,
                     "load_generator": "wrk" if use_wrk else "python", "cpus": os.cpu_count()},
        "summary": {
            "parallel_deliveries_per_s": median(("drain", "parallel", "deliveries_per_s")),
            "ordered_deliveries_per_s": median(("drain", "ordered", "deliveries_per_s")),
            "floor_rps": median(("floor", "rps")) if use_wrk else None,
            "service_cpu_us_per_delivery": median(("drain", "parallel", "service_cpu_us_per_delivery")),
            "receiver_cpu_us_per_delivery": median(("drain", "parallel", "receiver_cpu_us_per_delivery")),
            "db_cpu_us_per_delivery": median(("drain", "parallel", "db_cpu_us_per_delivery")),
            "latency_alone_p50_ms": median(("latency", "alone", "p50_ms")),
            "latency_alone_p99_ms": median(("latency", "alone", "p99_ms")),
            "latency_hung_p50_ms": median(("latency", "hung", "p50_ms")),
            "latency_hung_p99_ms": median(("latency", "hung", "p99_ms")),
            "ingest_rps_off": median(("ingest", "off", "rps")),
            "ingest_rps_on": median(("ingest", "on", "rps")),
            "ratios": {name: spread([r["ratios"][name] for r in rounds]) for name in rounds[0]["ratios"]},
        },
        "rounds": rounds,
        "problems": problems,
    }


def table(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    ratios = s["ratios"]
    lines = [
        f"drain, deliveries/s: parallel {s['parallel_deliveries_per_s']}, ordered {s['ordered_deliveries_per_s']}"
        f" (floor {s['floor_rps']} rps)",
        f"  CPU µs per delivery: service {s['service_cpu_us_per_delivery']}, receiver "
        f"{s['receiver_cpu_us_per_delivery']}, database {s['db_cpu_us_per_delivery']}",
        f"201 to arrival at {doc['settings']['rate']} events/s: alone p50 {s['latency_alone_p50_ms']} ms"
        f" p99 {s['latency_alone_p99_ms']} ms; beside a hung destination p50 {s['latency_hung_p50_ms']} ms"
        f" p99 {s['latency_hung_p99_ms']} ms",
        f"ingest rps: off {s['ingest_rps_off']}, on {s['ingest_rps_on']}",
    ]
    lines += [f"  {name}: {v['median']} [{v['min']}..{v['max']}]" for name, v in ratios.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.delivery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--events", type=int, default=20000, help="events each drain delivers")
    parser.add_argument("--seconds", type=int, default=10, help="length of each latency and ingest point")
    parser.add_argument("--rate", type=float, default=500.0, help="events/s ingested while latency is measured")
    parser.add_argument("--max-in-flight", type=int, default=32, help="the drained destinations' max_in_flight")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    doc = run(args)
    log(table(doc))
    if args.out:
        write_json(args.out, doc)
    print_json(doc)
    if doc["problems"]:
        log("problems:\n  " + "\n  ".join(doc["problems"]))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
