"""Dedup load test: send a signed plan and count what the service answers.

    python -m bench.dedup_load --url http://127.0.0.1:8080 --source square \
        --tenant bench --total 20000 --unique 10000 --concurrency 64 --out result.json

Counts come from the answers (201 accepted, 200 + Idempotent-Replayed
duplicate, 422 conflict, anything else "other"), never from the plan.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp
import orjson

from bench.plan import PlannedRequest, build_plan


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


async def run(
    url: str, plan: list[PlannedRequest], concurrency: int, progress_every: float = 2.0
) -> dict[str, float | int]:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dedup_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="service base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--source", required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--total", type=int, required=True, help="requests to send (N)")
    parser.add_argument("--unique", type=int, required=True, help="distinct events among them (U)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (C)")
    parser.add_argument("--secret", default=os.environ.get("WEBHOOK_SECRET"), help="default: $WEBHOOK_SECRET")
    parser.add_argument("--seed", type=int, default=None, help="shuffle seed, for a repeatable order")
    parser.add_argument("--out", type=Path, required=True, help="where to write the result JSON")
    args = parser.parse_args(argv)
    if not args.secret:
        parser.error("--secret or WEBHOOK_SECRET is required")
    if not 1 <= args.unique <= args.total:
        parser.error("need 1 <= --unique <= --total")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")

    run_id, plan = build_plan(
        total=args.total, unique=args.unique, tenant=args.tenant, secret=args.secret, seed=args.seed
    )
    target = f"{args.url.rstrip('/')}/pos/{args.source}/ingest"
    print(f"dedup_load: {args.total} requests, {args.unique} distinct, concurrency {args.concurrency}, run {run_id}", file=sys.stderr)
    result = asyncio.run(run(target, plan, args.concurrency))
    result = {"run_id": run_id, "unique": args.unique, "concurrency": args.concurrency, **result}
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
