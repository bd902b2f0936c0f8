"""What a hostile (or merely careless) reader costs the service, on two trees
side by side: the one under test and an older checkout (``--base``), interleaved
(base, main, main, base, ...) so that the shared machine's drift falls on both.

    git worktree add /tmp/base-18-read 176c9d6
    python -m bench.attack_readers --base /tmp/base-18-read --out bench/results/attack_readers.json

On one embedded PostgreSQL of its own (bench/database.py), each tree's
``codex-ingest serve --no-migrate`` run with that tree as its working directory
and PYTHONPATH (the package it imports is recorded), only on 127.0.0.1:

page: P events of S bytes of one tenant (seeded by SQL); a fresh one-worker
  service per measurement answers one ``GET /events?limit=1000``; the worker's
  peak RSS growth over it (/proc VmHWM after clear_refs), the answer's size,
  events and time. Then ``codex-ingest export`` of the same tenant to
  /dev/null (peak RSS, VmHWM polled; time): export streams and has no page
  cap, but it fetched 1000 rows at a time.
waiting: R readers long-poll (wait=W) a tenant nobody writes to, from a
  process of their own, as a consumer does: again at once after an answer, or
  after Retry-After when the answer has one. Meanwhile signed single-event
  ingests, C at a time for D seconds (the first second discarded): p50, p99,
  rps of the 201s; and the same ingest on the same service before the readers
  came (alone).

Prints one JSON line per measurement, writes everything and the medians
(after/before ratios) to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.database import checkpoint, connection, embedded_database
from bench.faults import SignedLoad
from bench.local import status_kb
from bench.output import log, print_json, write_json
from bench.python_load import percentile
from bench.read_side.api import HEADERS, TOKEN
from bench.read_side.quiet import tests_running
from bench.service import SECRET, serving_tree, tree_env, tree_package

MAIN = Path(__file__).resolve().parents[1]
SEED_SQL = """
INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, content_type)
SELECT $1::text, 'orders', 'k' || g, sha256(b.body), b.body, 'application/json'
FROM generate_series(1, $2::int) AS g,
     LATERAL (SELECT convert_to('{"n":' || g || ',"p":"'
                                || repeat(md5(g::text), ($3::int - 20) / 32) || '"}', 'UTF8') AS body) AS b
"""


@dataclass(frozen=True)
class Tree:
    name: str  # "before" or "after"
    root: Path
    settings: tuple[tuple[str, str], ...] = ()  # extra environment of its service (--after-env)

    def env(self, **extra: str) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
        return tree_env(self.root, {**extra, **dict(self.settings)}, base=keep)

    def package(self) -> str:
        """Where ``import codex_ingest`` resolves with this tree's cwd and PYTHONPATH (inside it, or exit)."""
        return tree_package(self.root, self.env())


@contextlib.contextmanager
def serving(tree: Tree, url: str, workdir: Path, workers: int) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    with (workdir / f"serve-{tree.name}-{time.monotonic_ns()}.log").open("ab") as log_file:
        env = tree.env(DATABASE_URL=url, WEBHOOK_SECRET=SECRET, CODEX_API_TOKENS=f"{TOKEN}=*", LOG_LEVEL="WARNING",
                       BATCHING="on", TMPDIR=str(workdir))
        with serving_tree(tree.root, env, workers, output=log_file,
                          ready=lambda port: _ready(f"http://127.0.0.1:{port}"), stop_seconds=60) as (proc, port):
            yield proc, f"http://127.0.0.1:{port}"


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/readyz", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


# -- page: one GET /events over large bodies ---------------------------------------------------


def measure_page(tree: Tree, url: str, workdir: Path, tenant: str) -> dict[str, Any]:
    with serving(tree, url, workdir, workers=1) as (proc, base_url):
        pid = proc.pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS now
        rss = status_kb(pid, "VmRSS") or 0
        request = urllib.request.Request(f"{base_url}/events?tenant={tenant}&limit=1000", headers=HEADERS)
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=300) as resp:
            raw = resp.read()
        seconds = time.perf_counter() - started
        peak = status_kb(pid, "VmHWM") or 0
    page = orjson.loads(raw)
    return {"tree": tree.name, "events": len(page["events"]), "answer_mb": round(len(raw) / 2**20, 1),
            "seconds": round(seconds, 3), "rss_before_mb": round(rss / 1024, 1),
            "peak_rss_growth_mb": round((peak - rss) / 1024, 1)}


def measure_export(tree: Tree, url: str, tenant: str) -> dict[str, Any]:
    """Peak RSS polled from /proc (VmHWM) while it runs: wait4's ru_maxrss would also count this
    process's own memory, which the child's is copied from at fork."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "codex_ingest", "export", "--tenant", tenant], cwd=tree.root,
                            env=tree.env(DATABASE_URL=url, LOG_LEVEL="WARNING"), stdout=subprocess.DEVNULL)
    peak_kb = 0
    while proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            peak_kb = max(peak_kb, status_kb(proc.pid, "VmHWM") or 0)
        time.sleep(0.005)
    return {"tree": tree.name, "exit": proc.returncode, "seconds": round(time.perf_counter() - started, 2),
            "peak_rss_mb": round(peak_kb / 1024, 1)}


# -- waiting: ingest while readers wait at the head -----------------------------------------


def _readers_process(base_url: str, headers: dict[str, str], tenant: str, count: int, wait: float, stop: Any,
                     out: Any) -> None:
    out.put(asyncio.run(_readers(base_url, headers, tenant, count, wait, stop)))


async def _readers(base_url: str, headers: dict[str, str], tenant: str, count: int, wait: float,
                   stop: Any) -> dict[str, Any]:
    counts: dict[str, Any] = {"answers": 0, "answered_at_once_with_retry_after": 0, "errors": 0, "statuses": {}}
    async with aiohttp.ClientSession(base_url, headers=headers, connector=aiohttp.TCPConnector(limit=count + 8),
                                     timeout=aiohttp.ClientTimeout(total=wait + 30)) as session:

        async def reader() -> None:
            cursor: str | None = None
            while True:
                params = {"tenant": tenant, "wait": f"{wait:g}"} | ({"after": cursor} if cursor else {})
                try:
                    async with session.get("/events", params=params) as resp:
                        raw, status, retry_after = await resp.read(), resp.status, resp.headers.get("Retry-After")
                except (TimeoutError, aiohttp.ClientError):
                    counts["errors"] += 1
                    await asyncio.sleep(0.5)
                    continue
                counts["answers"] += 1
                counts["statuses"][str(status)] = counts["statuses"].get(str(status), 0) + 1
                if status == 200:
                    cursor = orjson.loads(raw)["next_cursor"]
                if retry_after is not None:
                    counts["answered_at_once_with_retry_after"] += status == 200
                    await asyncio.sleep(float(retry_after))
                elif status != 200:
                    await asyncio.sleep(0.5)

        tasks = [asyncio.create_task(reader()) for _ in range(count)]
        while not stop.is_set():
            await asyncio.sleep(0.2)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return counts


def waiting_now(base_url: str) -> float:
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("codex_ingest_readers_waiting"))


async def ingest(base_url: str, tenant: str, concurrency: int, seconds: float) -> dict[str, Any]:
    load = SignedLoad(url=f"{base_url}/pos/orders/ingest", secret=SECRET, tenant=tenant, concurrency=concurrency)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds + 1, stop.set)
    began = time.monotonic()
    await load.run(stop)
    counted = [a for a in load.answers if a.sent >= began + 1]  # the first second warms up
    ok = sorted(a.seconds * 1000 for a in counted if a.status == 201)
    statuses: dict[str, int] = {}
    for a in counted:
        statuses[str(a.status)] = statuses.get(str(a.status), 0) + 1
    return {"accepted": len(ok), "rps": round(len(ok) / seconds, 1), "p50_ms": round(percentile(ok, 0.50), 2),
            "p99_ms": round(percentile(ok, 0.99), 2), "statuses": statuses}


def measure_waiting(tree: Tree, url: str, workdir: Path, args: argparse.Namespace, run: str) -> dict[str, Any]:
    figure: dict[str, Any] = {"tree": tree.name, "tests_running": tests_running()}
    with serving(tree, url, workdir, workers=args.workers) as (_, base_url):
        asyncio.run(checkpoint(url))
        figure["alone"] = asyncio.run(ingest(base_url, f"alone-{run}", args.concurrency, args.seconds))
        context = multiprocessing.get_context("spawn")
        stop, out = context.Event(), context.Queue()
        readers = context.Process(target=_readers_process,
                                  # HEADERS: this process's token (a spawned child would draw its own).
                                  args=(base_url, HEADERS, f"quiet-{run}", args.readers, args.wait, stop, out))
        readers.start()
        try:
            # Parked: as many as the service keeps (all of them, or its cap), steady for a second.
            deadline, last, steady_since = time.monotonic() + 60, -1.0, time.monotonic()
            while time.monotonic() < deadline:
                now = waiting_now(base_url)
                if now != last:
                    last, steady_since = now, time.monotonic()
                elif now > 0 and time.monotonic() - steady_since > 2:
                    break
                time.sleep(0.2)
            figure["readers_waiting"] = last
            asyncio.run(checkpoint(url))
            figure["with_readers"] = asyncio.run(ingest(base_url, f"loaded-{run}", args.concurrency, args.seconds))
            figure["readers_waiting_after"] = waiting_now(base_url)
        finally:
            stop.set()
            figure["readers"] = out.get(timeout=60)
            readers.join(30)
    return figure


# -- the run ---------------------------------------------------------------------------------


def _median(runs: list[dict[str, Any]], tree: str, *path: str) -> float:
    values = []
    for run in runs:
        if run["tree"] == tree:
            value: Any = run
            for key in path:
                value = value[key]
            values.append(value)
    return round(statistics.median(values), 2)


def summary(runs: list[dict[str, Any]], paths: list[tuple[str, ...]]) -> dict[str, Any]:
    """Per figure, each tree's median and its ratio to before's."""
    names = list(dict.fromkeys(run["tree"] for run in runs))
    out = {}
    for path in paths:
        medians = {name: _median(runs, name, *path) for name in names}
        before = medians.get("before")
        out[".".join(path)] = {**medians, **{f"{name}/before": round(value / before, 3) if before else None
                                             for name, value in medians.items() if name != "before"}}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attack_readers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the checkout to compare with (a git worktree)")
    parser.add_argument("--only", default="page,waiting", help="comma-separated parts: page, waiting")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each measures both trees, order alternating")
    parser.add_argument("--events", type=int, default=300, help="events seeded for the page (page)")
    parser.add_argument("--event-bytes", type=int, default=1_000_000, help="bytes of each (page)")
    parser.add_argument("--readers", type=int, default=500, help="readers waiting at the head (waiting)")
    parser.add_argument("--wait", type=float, default=30, help="their wait= (waiting)")
    parser.add_argument("--concurrency", type=int, default=8, help="ingests in flight (waiting)")
    parser.add_argument("--seconds", type=float, default=10, help="seconds of each ingest measurement (waiting)")
    parser.add_argument("--workers", type=int, default=2, help="service workers (waiting; page runs one)")
    parser.add_argument("--after-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of the tree under test's service (READ_MAX_WAITING=32, ...); repeatable")
    parser.add_argument("--uncapped", action="store_true",
                        help="also the tree under test with READ_MAX_WAITING=1000000 (waiting): the cap's own share")
    parser.add_argument("--out", type=Path, default=MAIN / "bench" / "results" / "attack_readers.json")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    trees = [Tree("before", args.base.resolve()),
             Tree("after", MAIN, tuple(tuple(pair.split("=", 1)) for pair in args.after_env))]  # type: ignore[misc]
    result: dict[str, Any] = {"bench": "attack_readers", "cpus": os.cpu_count(),
                              "settings": {k: str(v) for k, v in vars(args).items()},
                              "packages": {t.name: t.package() for t in trees}}
    for tree in trees:
        if not result["packages"][tree.name].startswith(str(tree.root) + "/"):
            parser.error(f"{tree.name}: codex_ingest resolves to {result['packages'][tree.name]}, not under {tree.root}")
    run_id = uuid.uuid4().hex[:8]
    started = time.monotonic()
    with embedded_database("codex-attack-readers-") as (_, url, workdir):
        if "page" in parts:
            tenant = f"large-{run_id}"

            async def seed() -> None:
                async with connection(url) as conn:
                    await conn.execute(SEED_SQL, tenant, args.events, args.event_bytes)
                    await conn.execute("VACUUM (ANALYZE) events")

            asyncio.run(seed())
            log(f"seeded {args.events} events of {args.event_bytes:,} bytes ({tenant})")
            pages, exports = [], []
            for round_ in range(args.rounds):
                for tree in trees if round_ % 2 == 0 else trees[::-1]:
                    pages.append(measure_page(tree, url, workdir, tenant))
                    print_json({"figure": "page", **pages[-1]})
                    exports.append(measure_export(tree, url, tenant))
                    print_json({"figure": "export", **exports[-1]})
            result["page"] = {"runs": pages, "export": exports,
                              "median": summary(pages, [("peak_rss_growth_mb",), ("answer_mb",), ("events",),
                                                        ("seconds",)]),
                              "export_median": summary(exports, [("peak_rss_mb",), ("seconds",)])}
        if "waiting" in parts:
            runs = []
            arms = [*trees, *([Tree("after-uncapped", MAIN, (*trees[1].settings, ("READ_MAX_WAITING", "1000000")))]
                              if args.uncapped else [])]
            for round_ in range(args.rounds):
                for tree in arms if round_ % 2 == 0 else arms[::-1]:
                    runs.append(measure_waiting(tree, url, workdir, args, f"{run_id}-{round_}-{tree.name}"))
                    print_json({"figure": "waiting", **runs[-1]})
            result["waiting"] = {"runs": runs, "median": summary(runs, [
                ("alone", "p50_ms"), ("alone", "p99_ms"), ("alone", "rps"),
                ("with_readers", "p50_ms"), ("with_readers", "p99_ms"), ("with_readers", "rps"),
                ("readers_waiting",)])}
    result["total_s"] = round(time.monotonic() - started, 1)
    write_json(args.out, result)
    print_json({"figure": "summary", **{k: v["median"] for k, v in result.items() if isinstance(v, dict) and "median" in v},
                **({"export": result["page"]["export_median"]} if "page" in result else {})})
    log(f"wrote {args.out} ({result['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
