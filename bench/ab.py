"""A/B: the service of a git revision (A) against the working tree (B), in one run.

    python -m bench.ab --base REV [--rounds 3] [--point single|batch|both] [--seconds 8] [--out FILE]
    python -m bench.ab --base REV --head REV ...     # B a revision too (the same one: an A/A run)

Tree A is ``git archive REV`` unpacked into a temporary directory (removed at
the end); tree B is the working tree this bench belongs to, uncommitted
changes included (or, with --head, another revision unpacked the same way).
The bench itself (plans, payloads, wrk script) is the working tree's, for
both. Each tree is served by its own code (``PYTHONPATH`` set to the tree:
bench.service's tree_env and serving_tree) and writes to a database of its
own on one embedded PostgreSQL, created by that tree's own
``codex-ingest migrate apply``: when the trees differ in schema (a column, an
index), what that costs on writes is part of what is measured. Every point
starts on a fresh copy of its tree's migrated database (``CREATE DATABASE ...
TEMPLATE``), on a fresh ``serve``, after a short warm-up that is not measured.

Rounds interleave the trees point by point, A then B, then B then A, so the
machine's drift falls on both. Both trees get the same requests: the same
signed plan and wrk script (single), the same batches (batch). Points:

* ``single``: bench.throughput's single-event point: 1 worker, batching on,
  64 connections, wrk with bench/wrk_plan.lua, half of the requests repeats;
  rps, p99, the worker's CPU per request, the database server's CPU per
  request; and aiohttp's floor (bench.floor) once per round, for each side's
  overhead_ratio.
* ``batch``: bench.batch_load's drive: 2 workers, 4 clients posting NDJSON
  batches of 1,000 new 300-byte events; events/s, p99 per batch, the workers'
  and the database server's CPU per event (``batches_ran_out``: every batch
  built was sent before the seconds were up; the rate is still over the time
  they took).

Every ratio is B/A, taken within a round and then summarized over the rounds
as median [min..max]: below 1 is B cheaper (CPU) or slower (rps, events/s).
Each point also checks that the rows stored equal the distinct events sent;
the exit status is 1 when one does not. One JSON document goes to stdout
(and, indented, to --out); progress and a table of the medians to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import floor
from bench.batch_load import build_batches, drive
from bench.database import checkpoint, connection, count_rows, cpu_between, embedded_server, server_cpu
from bench.local import cpu_seconds
from bench.output import log, print_json, write_json
from bench.plan import build_plan
from bench.point import fresh_plan, run_point
from bench.python_load import drive_with_python
from bench.service import _SERVICE_ENV, SECRET, serving_tree, tree_env, tree_package, worker_pids
from bench.wrk import drive_with_wrk, wrk_or_python, wrk_version

ROOT = Path(__file__).resolve().parents[1]  # tree B: the working tree this bench belongs to
SIDES = ("a", "b")

# The single-event point: bench.throughput's at 64 connections, 1 worker, batching on.
SINGLE_CONNECTIONS = 64
SINGLE_WORKERS = 1
DUPLICATES = 0.5
# The batch point: bench.batch_load's defaults.
BATCH_WORKERS = 2
BATCH_CLIENTS = 4
BATCH_ITEMS = 1000
BATCH_ITEM_BYTES = 300
BATCH_EVENTS_PER_S = 120_000  # above what this machine takes (77k on a quiet 2 cores): batches enough for the seconds
NDJSON = "application/x-ndjson"


# -- the two trees ------------------------------------------------------------------


def git(*args: str) -> str:
    """A read-only git command in tree B's repository (never one that writes the index or the tree)."""
    return subprocess.run(["git", "--no-optional-locks", "-C", str(ROOT), *args],
                          capture_output=True, text=True, check=True).stdout.rstrip()


def resolve(rev: str) -> str:
    try:
        return git("rev-parse", "--verify", f"{rev}^{{commit}}")
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"bench.ab: {rev!r} is not a revision of {ROOT}: {exc.stderr.strip()}") from None


@contextlib.contextmanager
def archived_tree(commit: str) -> Iterator[Path]:
    """``git archive`` of ``commit`` unpacked in a temporary directory, removed on the way out."""
    tree = Path(tempfile.mkdtemp(prefix="codex-ab-base-"))
    try:
        archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", "--format=tar", commit],
                                   stdout=subprocess.PIPE)
        assert archive.stdout is not None
        subprocess.run(["tar", "-x", "-C", str(tree)], stdin=archive.stdout, check=True)
        archive.stdout.close()
        if archive.wait() != 0:
            raise SystemExit(f"bench.ab: git archive {commit} failed")
        yield tree
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def migration_ids(tree: Path) -> list[str]:
    return sorted(p.stem for p in (tree / "migrations").glob("*.sql") if not p.stem.endswith(".rollback"))


def describe_b() -> dict[str, Any]:
    """Tree B: its HEAD and what differs from it in the service's code, schema and SQL."""
    changed = git("status", "--porcelain", "--", "codex_ingest", "sql", "migrations")
    return {"tree": str(ROOT), "head": git("rev-parse", "HEAD"),
            "uncommitted": changed.splitlines(), "migrations": migration_ids(ROOT)}


# -- the databases ------------------------------------------------------------------


class Databases:
    """Each side's database on one server: a template migrated by the side's own tree, and a fresh
    copy of it for every point."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.admin_url = server.get_uri()

    def url(self, side: str) -> str:
        return self.server.get_uri(database=f"ab_{side}")

    async def _execute(self, *statements: str) -> None:
        async with connection(self.admin_url) as conn:
            for statement in statements:
                await conn.execute(statement)

    def migrate(self, side: str, tree: Path) -> str:
        """Create ``ab_<side>_template`` and apply ``tree``'s migrations to it with ``tree``'s own command."""
        template = f"ab_{side}_template"
        asyncio.run(self._execute(f"CREATE DATABASE {template}"))
        env = tree_env(tree, {"DATABASE_URL": self.server.get_uri(database=template), "LOG_LEVEL": "WARNING"},
                       base=clean_environ())
        done = subprocess.run([sys.executable, "-m", "codex_ingest", "migrate", "apply"], cwd=tree, env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"bench.ab: migrate apply from {tree} failed ({done.returncode}):\n"
                             f"{done.stdout}{done.stderr}")
        return (done.stdout + done.stderr).strip()

    def fresh(self, side: str) -> str:
        """``ab_<side>`` dropped and made again from its template: empty, migrated; its URL."""
        asyncio.run(self._execute(f"DROP DATABASE IF EXISTS ab_{side} WITH (FORCE)",
                                  f"CREATE DATABASE ab_{side} TEMPLATE ab_{side}_template"))
        return self.url(side)


@contextlib.contextmanager
def embedded_server_only() -> Iterator[Any]:
    """An embedded PostgreSQL in a fresh work directory, nothing migrated in it; both removed on the way out."""
    workdir = Path(tempfile.mkdtemp(prefix="codex-ab-"))
    try:
        server = embedded_server(workdir)
        try:
            yield server
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- serving a side -------------------------------------------------------------------


def clean_environ() -> dict[str, str]:
    """This process's environment without the service's settings: both sides get only what is set here."""
    return {k: v for k, v in os.environ.items() if k not in _SERVICE_ENV}


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def serving(tree: Path, url: str, workers: int, settings: dict[str, str],
            log_dir: Path, name: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    env = tree_env(tree, {"DATABASE_URL": url, "WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "WARNING",
                          "BATCHING": "on", "TMPDIR": str(log_dir), **settings}, base=clean_environ())
    with (log_dir / f"{name}.log").open("ab") as output, \
            serving_tree(tree, env, workers, output=output, ready=ready) as (proc, port):
        yield proc, port


# -- the points ---------------------------------------------------------------------------


class Run:
    """What a run holds: the trees, the databases, the requests both sides get."""

    def __init__(self, args: argparse.Namespace, trees: dict[str, Path], databases: Databases, workdir: Path,
                 use_wrk: bool) -> None:
        self.args = args
        self.trees = trees
        self.databases = databases
        self.workdir = workdir
        self.use_wrk = use_wrk
        self.settings = dict(item.split("=", 1) for item in args.set)
        self.kept: dict[str, tuple[str, subprocess.Popen[bytes], int]] = {}  # side: (url, process, port) (--keep)
        self.plans: dict[int, tuple[str, list[Any]]] = {}
        if "single" in args.points:
            self.plan = fresh_plan(args.seconds, SINGLE_CONNECTIONS, DUPLICATES, use_wrk)
            _, self.warm_plan = build_plan(total=20_000, unique=10_000, tenant="ab-warmup", secret=SECRET)
        if "batch" in args.points:
            run_id = uuid.uuid4().hex[:8]
            self.batch_tenant = f"ab-batch-{run_id}"
            count = max(20, int(BATCH_EVENTS_PER_S * args.seconds / BATCH_ITEMS))
            warm = 20 * args.warmup  # a warm-up may run out: it is not measured
            log(f"bench.ab: building {count} + {warm} batches of {BATCH_ITEMS} events")
            self.batches = build_batches(count, BATCH_ITEMS, BATCH_ITEM_BYTES, run_id, "ndjson")
            self.warm_batches = build_batches(warm, BATCH_ITEMS, BATCH_ITEM_BYTES, f"warm-{run_id}", "ndjson")

    def database_cpu(self) -> dict[int, float]:
        return server_cpu(self.databases.server)

    def warm(self, port: int) -> None:
        if self.use_wrk:
            drive_with_wrk(port, self.warm_plan, "ab-warmup", SINGLE_CONNECTIONS, self.args.warmup, self.workdir)
        else:
            drive_with_python(port, self.warm_plan[:2000], SINGLE_CONNECTIONS)

    def keep_serving(self, stack: contextlib.ExitStack) -> None:
        """--keep: each side's service started once, on a fresh database, and warmed; the rounds'
        single points then go to these, seconds apart, each round with a plan of its own."""
        for side in SIDES:
            url = self.databases.fresh(side)
            proc, port = stack.enter_context(serving(self.trees[side], url, SINGLE_WORKERS, self.settings,
                                                     self.workdir, f"kept-single-{side}"))
            self.warm(port)
            self.kept[side] = (url, proc, port)

    def round_plan(self, round_: int) -> tuple[str, list[Any]]:
        """The plan both sides get in this round: the run's own, or with --keep one per round
        (a kept service has stored the plans before it: they would come back as duplicates)."""
        if not self.kept:
            return self.plan
        if round_ not in self.plans:
            self.plans = {round_: fresh_plan(self.args.seconds, SINGLE_CONNECTIONS, DUPLICATES, self.use_wrk)}
        return self.plans[round_]

    def single(self, side: str, round_: int) -> dict[str, Any]:
        if side in self.kept:
            url, proc, port = self.kept[side]
            return run_point(url, port, SINGLE_WORKERS, True, SINGLE_CONNECTIONS, self.args.seconds, DUPLICATES,
                             self.use_wrk, self.workdir, proc, plan=self.round_plan(round_),
                             database_cpu=self.database_cpu)
        url = self.databases.fresh(side)
        with serving(self.trees[side], url, SINGLE_WORKERS, self.settings, self.workdir,
                     f"r{round_}-single-{side}") as (proc, port):
            self.warm(port)
            point = run_point(url, port, SINGLE_WORKERS, True, SINGLE_CONNECTIONS, self.args.seconds, DUPLICATES,
                              self.use_wrk, self.workdir, proc, plan=self.plan, database_cpu=self.database_cpu)
        return point

    def batch(self, side: str, round_: int) -> dict[str, Any]:
        url = self.databases.fresh(side)
        with serving(self.trees[side], url, BATCH_WORKERS, self.settings, self.workdir,
                     f"r{round_}-batch-{side}") as (proc, port):
            pids = worker_pids(proc, BATCH_WORKERS)
            asyncio.run(drive(port, self.warm_batches, BATCH_CLIENTS, self.args.warmup, "ab-warmup", NDJSON))
            asyncio.run(checkpoint(url))
            db_before = self.database_cpu()
            cpu_before = cpu_seconds(pids)
            result = asyncio.run(drive(port, self.batches, BATCH_CLIENTS, self.args.seconds, self.batch_tenant,
                                       NDJSON))
            events = max(1, result["events_accepted"])
            result["cpu_us_per_event"] = round((cpu_seconds(pids) - cpu_before) / events * 1e6, 2)
            result["db_cpu_us_per_event"] = round(cpu_between(db_before, self.database_cpu()) / events * 1e6, 2)
        rows = asyncio.run(count_rows(url, self.batch_tenant))
        sent = result["batches"] * BATCH_ITEMS
        result["batches_ran_out"] = result["batches"] == len(self.batches)
        result["rows_stored"] = rows
        result["rows_ok"] = rows == sent == result["events_accepted"] and result["events_other"] == 0
        return result


SINGLE_FIGURES = ("rps", "p99_ms", "cpu_us_per_request", "db_cpu_us_per_request", "overhead_ratio")
SINGLE_RATIOS = ("cpu_us_per_request", "rps", "p99_ms", "db_cpu_us_per_request")
BATCH_FIGURES = ("events_per_s", "p99_ms", "cpu_us_per_event", "db_cpu_us_per_event")
BATCH_RATIOS = ("events_per_s", "cpu_us_per_event", "db_cpu_us_per_event", "p99_ms")


def ratios(a: dict[str, Any], b: dict[str, Any], names: tuple[str, ...]) -> dict[str, float]:
    return {name: round(b[name] / a[name], 3) for name in names if a.get(name) and b.get(name) is not None}


def run_round(run: Run, round_: int) -> dict[str, Any]:
    order = SIDES if round_ % 2 == 1 else SIDES[::-1]
    doc: dict[str, Any] = {"round": round_, "order": "".join(order).upper()}
    if "single" in run.args.points:
        measured_floor = None
        if run.use_wrk and run.args.floor:
            measured_floor = floor.measure(SINGLE_CONNECTIONS, run.args.seconds)
            log(f"round {round_}: floor: {measured_floor['rps']:,.0f} rps, "
                f"{measured_floor['cpu_us_per_request']} µs CPU/request")
        sides = {}
        for side in order:
            point = run.single(side, round_)
            if measured_floor is not None:
                point["overhead_ratio"] = round(point["cpu_us_per_request"] / measured_floor["cpu_us_per_request"], 2)
            log(f"round {round_}: single {side.upper()}: {point['rps']:,.0f} rps, p99 {point['p99_ms']} ms, "
                f"{point['cpu_us_per_request']} µs CPU/request, database {point.get('db_cpu_us_per_request')} µs, "
                f"rows {'ok' if point['rows_ok'] else 'WRONG'}")
            sides[side] = point
        doc["single"] = {**sides, "floor": measured_floor, "ratios": ratios(sides["a"], sides["b"], SINGLE_RATIOS)}
        log(f"round {round_}: single B/A: {doc['single']['ratios']}")
    if "batch" in run.args.points:
        sides = {}
        for side in order:
            result = run.batch(side, round_)
            log(f"round {round_}: batch {side.upper()}: {result['events_per_s']:,.0f} events/s, "
                f"p99 {result['p99_ms']} ms/batch, {result['cpu_us_per_event']} µs CPU/event, "
                f"database {result['db_cpu_us_per_event']} µs, rows {'ok' if result['rows_ok'] else 'WRONG'}"
                + (" (ran out of batches)" if result["batches_ran_out"] else ""))
            sides[side] = result
        doc["batch"] = {**sides, "ratios": ratios(sides["a"], sides["b"], BATCH_RATIOS)}
        log(f"round {round_}: batch B/A: {doc['batch']['ratios']}")
    return doc


# -- the summary ------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values)}


def summarize(rounds: list[dict[str, Any]], point: str, figures: tuple[str, ...],
              names: tuple[str, ...]) -> dict[str, Any]:
    mine = [r[point] for r in rounds]
    out: dict[str, Any] = {}
    for side in SIDES:
        out[side] = {f: round(statistics.median(m[side][f] for m in mine), 3)
                     for f in figures if all(f in m[side] for m in mine)}
    if point == "single" and all(m["floor"] for m in mine):
        out["floor_cpu_us"] = round(statistics.median(m["floor"]["cpu_us_per_request"] for m in mine), 1)
        out["floor_rps"] = round(statistics.median(m["floor"]["rps"] for m in mine), 1)
    out["ratios"] = {n: spread([m["ratios"][n] for m in mine]) for n in names if all(n in m["ratios"] for m in mine)}
    out["rows_ok"] = all(m[side]["rows_ok"] for m in mine for side in SIDES)
    return out


def table(doc: dict[str, Any]) -> str:
    """The medians as a few lines for a terminal."""
    labels = {"rps": "rps", "p99_ms": "p99 ms", "cpu_us_per_request": "CPU µs/request",
              "db_cpu_us_per_request": "database CPU µs/request", "overhead_ratio": "overhead_ratio",
              "events_per_s": "events/s", "cpu_us_per_event": "CPU µs/event",
              "db_cpu_us_per_event": "database CPU µs/event"}
    b = f"{doc['b']['rev']} ({doc['b']['commit'][:10]})" if "rev" in doc["b"] else "the working tree"
    rows = [f"bench.ab: A = {doc['a']['rev']} ({doc['a']['commit'][:10]}), B = {b}; "
            f"{len(doc['rounds'])} rounds of {doc['settings']['seconds']} s; medians, B/A as median [min..max]",
            f"{'':8}{'':26}{'A':>12}{'B':>12}   B/A"]
    for point, figures in (("single", SINGLE_FIGURES), ("batch", BATCH_FIGURES)):
        summary = doc["medians"].get(point)
        if summary is None:
            continue
        for i, figure in enumerate(f for f in figures if f in summary["a"]):
            r = summary["ratios"].get(figure)
            shown = f"{r['median']:.3f} [{r['min']:.3f}..{r['max']:.3f}]" if r else ""
            rows.append(f"{point if i == 0 else '':8}{labels[figure]:26}{summary['a'][figure]:>12,.1f}"
                        f"{summary['b'][figure]:>12,.1f}   {shown}")
        if "floor_cpu_us" in summary:
            rows.append(f"{'':8}{'floor CPU µs/request':26}{summary['floor_cpu_us']:>12,.1f}  (aiohttp, same rounds)")
        if not summary["rows_ok"]:
            rows.append(f"{'':8}ROWS WRONG: rows stored differ from the events sent in some round")
    return "\n".join(rows)


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0],
                                     epilog="More in docs/bench.md, under A/B.")
    parser.add_argument("--base", required=True, metavar="REV",
                        help="the git revision served as A (B is the working tree)")
    parser.add_argument("--head", metavar="REV", default=None,
                        help="serve this revision as B instead of the working tree (--head REV --base REV: an A/A run)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each A and B in alternating order")
    parser.add_argument("--point", choices=("single", "batch", "both"), default="both")
    parser.add_argument("--seconds", type=int, default=8, help="seconds of measured load per side and point")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each measurement, not measured")
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                        help="measure aiohttp's floor (bench.floor) once a round for overhead_ratio (single)")
    parser.add_argument("--keep", action=argparse.BooleanOptionalAction, default=False,
                        help="single point: serve each side once for the whole run and alternate the load "
                             "between the two running services (A and B seconds apart, not a restart apart)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for both sides' service, e.g. DB_POOL_MAX=4 (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON document here, indented")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds < 1 or args.warmup < 1:
        parser.error("--rounds, --seconds and --warmup must be at least 1")
    if any("=" not in item for item in args.set):
        parser.error("--set takes NAME=VALUE")
    args.points = ("single", "batch") if args.point == "both" else (args.point,)

    commit = resolve(args.base)
    head_commit = resolve(args.head) if args.head is not None else None
    use_wrk = wrk_or_python("bench.ab") if "single" in args.points else False
    rounds: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        trees = {"a": stack.enter_context(archived_tree(commit)),
                 "b": ROOT if head_commit is None else stack.enter_context(archived_tree(head_commit))}
        # What B is, read before the run: the working tree may change while it goes on.
        described = {"a": {"rev": args.base, "commit": commit, "migrations": migration_ids(trees["a"])},
                     "b": describe_b() if head_commit is None else
                     {"rev": args.head, "commit": head_commit, "migrations": migration_ids(trees["b"])}}
        for side, tree in trees.items():
            log(f"bench.ab: {side.upper()} serves {tree_package(tree, tree_env(tree, {}, base=clean_environ()))}"
                f" (migrations {', '.join(described[side]['migrations'])})")
        server = stack.enter_context(embedded_server_only())
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="codex-ab-work-")))
        databases = Databases(server)
        for side, tree in trees.items():
            databases.migrate(side, tree)
        run = Run(args, trees, databases, work, use_wrk)
        if args.keep and "single" in args.points:
            run.keep_serving(stack)
        for round_ in range(1, args.rounds + 1):
            rounds.append(run_round(run, round_))

    doc: dict[str, Any] = {
        **described,
        "settings": {
            "rounds": args.rounds, "seconds": args.seconds, "warmup": args.warmup, "points": list(args.points),
            "keep": args.keep,
            "set": run.settings, "load_generator": wrk_version() if use_wrk else "python",
            "single": {"connections": SINGLE_CONNECTIONS, "workers": SINGLE_WORKERS, "batching": True,
                       "duplicates": DUPLICATES},
            "batch": {"workers": BATCH_WORKERS, "clients": BATCH_CLIENTS, "items": BATCH_ITEMS,
                      "item_bytes": BATCH_ITEM_BYTES, "format": "ndjson"},
        },
        "rounds": rounds,
        "medians": {},
    }
    if "single" in args.points:
        doc["medians"]["single"] = summarize(rounds, "single", SINGLE_FIGURES, SINGLE_RATIOS)
    if "batch" in args.points:
        doc["medians"]["batch"] = summarize(rounds, "batch", BATCH_FIGURES, BATCH_RATIOS)
    doc["ok"] = all(m["rows_ok"] for m in doc["medians"].values()) and all(
        r["single"][side]["other_answers"] == 0 for r in rounds if "single" in r for side in SIDES)
    print_json(doc)
    if args.out is not None:
        write_json(args.out, doc)
        log(f"bench.ab: wrote {args.out}")
    log(table(doc))
    if not doc["ok"]:
        log("bench.ab: FAIL: rows stored differ from the distinct events sent, or unexpected answers")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
