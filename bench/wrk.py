"""Driving a server with wrk and bench/wrk_plan.lua: a signed plan written
where the script reads it, wrk run once, its figures read back."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from bench.output import log
from bench.plan import SOURCE, PlannedRequest

SCRIPT = Path(__file__).resolve().parent / "wrk_plan.lua"


def wrk_installed() -> bool:
    return shutil.which("wrk") is not None


def wrk_or_python(bench: str) -> bool:
    """Whether wrk is here to drive the load; if not, says that the Python load generator will."""
    if wrk_installed():
        return True
    log(f"{bench}: wrk is not installed (apt-get install wrk); using the Python load generator instead")
    return False


def wrk_version() -> str:
    if not wrk_installed():
        return "not installed"  # the parts that need it refuse to run; the others do not
    lines = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()
    return lines[0] if lines else "?"


def write_plan_file(plan: Sequence[PlannedRequest], path: Path) -> None:
    """One request a line, as wrk_plan.lua reads it: key, signature and body, tab-separated."""
    with path.open("wb") as out:
        for item in plan:
            out.write(f"{item.headers['Idempotency-Key']}\t{item.headers['X-Signature']}\t".encode())
            out.write(item.body + b"\n")


def drive_with_wrk(port: int, plan: Sequence[PlannedRequest], tenant: str, connections: int, seconds: int,
                   workdir: Path, before_start: Callable[[], None] | None = None) -> dict:
    """``before_start``, when given, is called once the plan file is written, right before wrk starts."""
    plan_file = workdir / f"plan-{tenant}.tsv"
    write_plan_file(plan, plan_file)
    env = {**os.environ, "PLAN_FILE": str(plan_file), "PLAN_TENANT": tenant, "PLAN_PATH": f"/pos/{SOURCE}/ingest"}
    if before_start is not None:
        before_start()
    result = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
         "-s", str(SCRIPT), f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, env=env, check=True,
    )
    line = next(x for x in result.stdout.splitlines() if x.startswith("WRK_RESULT "))
    raw = orjson.loads(line[len("WRK_RESULT "):])
    return {
        "sent": raw["sent"],
        "completed": raw["completed"],
        "accepted": raw["accepted"],
        "duplicates": raw["duplicates"],
        "other": raw["other"] + raw["conflicts"],
        "rps": raw["completed"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
    }


def rate_and_latency(measured: dict) -> dict:
    """A drive's rps, p50_ms and p99_ms, rounded as the benches report them."""
    return {
        "rps": round(measured["rps"], 1),
        "p50_ms": round(measured["p50_ms"], 2),
        "p99_ms": round(measured["p99_ms"], 2),
    }
