"""The Python load generator: a signed plan sent with aiohttp, ``concurrency``
requests in flight, every answer counted (201 accepted, 200 +
Idempotent-Replayed duplicate, 422 conflict, anything else "other").

bench.dedup_load is its command line; the throughput measurements
(bench/point.py) use it where wrk is missing, and to replay what wrk left in
flight.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

from bench.plan import SOURCE, PlannedRequest


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The value at the rounded index ``fraction`` of the way through ``sorted_values``."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


async def run(
    url: str, plan: Sequence[PlannedRequest], concurrency: int, progress_every: float = 2.0
) -> dict[str, Any]:
    counts = {"accepted": 0, "duplicates": 0, "conflicts": 0, "other": 0}
    other_statuses: dict[str, int] = {}
    latencies: list[float] = []
    queue_position = 0
    done = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal queue_position, done
            while queue_position < len(plan):
                item = plan[queue_position]
                queue_position += 1
                started = time.perf_counter()
                try:
                    async with session.post(url, data=item.body, headers=item.headers) as resp:
                        await resp.read()
                        status = resp.status
                        replayed = resp.headers.get("Idempotent-Replayed") == "true"
                except (TimeoutError, aiohttp.ClientError) as exc:
                    status, replayed = -1, False
                    other_statuses[type(exc).__name__] = other_statuses.get(type(exc).__name__, 0) + 1
                latencies.append(time.perf_counter() - started)
                if status == 201:
                    counts["accepted"] += 1
                elif status == 200 and replayed:
                    counts["duplicates"] += 1
                elif status == 422:
                    counts["conflicts"] += 1
                else:
                    counts["other"] += 1
                    if status != -1:
                        other_statuses[str(status)] = other_statuses.get(str(status), 0) + 1
                done += 1

        async def progress() -> None:
            while True:
                await asyncio.sleep(progress_every)
                elapsed = time.perf_counter() - began
                print(
                    f"  {done}/{len(plan)} sent, {done / elapsed:,.0f} req/s, "
                    f"accepted {counts['accepted']} duplicates {counts['duplicates']} other {counts['other']}",
                    file=sys.stderr,
                    flush=True,
                )

        began = time.perf_counter()
        reporter = asyncio.create_task(progress())
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            reporter.cancel()
        elapsed = time.perf_counter() - began

    latencies.sort()
    return {
        "total": len(plan),
        **counts,
        "rps": round(len(plan) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "elapsed_s": round(elapsed, 3),
        "other_statuses": other_statuses,
    }


def drive_with_python(port: int, plan: Sequence[PlannedRequest], connections: int) -> dict:
    """``run`` on the local service, its figures named as bench.wrk's ``drive_with_wrk`` names them."""
    result = asyncio.run(run(f"http://127.0.0.1:{port}/pos/{SOURCE}/ingest", plan, connections))
    return {
        "sent": len(plan),
        "completed": len(plan),
        "accepted": result["accepted"],
        "duplicates": result["duplicates"],
        "other": result["other"] + result["conflicts"],
        "rps": result["rps"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
    }
