"""2. long_poll: R readers wait at the head (wait=25); a sender posts one event
at a time, after every reader has had the previous one and a small random
pause; per event and reader, the time from the sender's 201 to the reader's
answer (p50, p99); every reader gets every event once."""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.database import checkpoint
from bench.faults import SignedLoad
from bench.plan import SOURCE
from bench.read_side.api import HEADERS, read_api_service
from bench.read_side.quiet import guarded
from bench.service import SECRET


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


async def long_poll(base_url: str, tenant: str, readers: int, count: int, wait: float,
                    pause_ms: tuple[float, float], deadline_s: float, seed_: int) -> dict[str, Any]:
    rng = random.Random(seed_)
    load = SignedLoad(url=f"{base_url}/pos/{SOURCE}/ingest", secret=SECRET, tenant=tenant, concurrency=1)
    received: list[dict[str, float]] = [{} for _ in range(readers)]   # key -> when the reader's answer came
    duplicates = [0] * readers
    answers = [0] * readers
    empty_answers = [0] * readers
    errors: list[str] = []
    progress = asyncio.Event()
    acked: dict[str, float] = {}
    statuses: dict[int, int] = {}
    stalled: list[dict[str, Any]] = []

    async def reader(i: int, session: aiohttp.ClientSession) -> None:
        cursor: str | None = None
        while True:
            params = {"tenant": tenant, "limit": "1000", "wait": f"{wait:g}"} | ({"after": cursor} if cursor else {})
            try:
                async with session.get("/events", params=params) as resp:
                    raw = await resp.read()
                    came = time.monotonic()
                    status = resp.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                errors.append(f"reader {i}: {type(exc).__name__}")
                await asyncio.sleep(0.1)
                continue
            if status != 200:
                errors.append(f"reader {i}: {status} {raw[:200]!r}")
                await asyncio.sleep(0.1)
                continue
            page = orjson.loads(raw)
            answers[i] += 1
            if not page["events"]:
                empty_answers[i] += 1
            for event in page["events"]:
                key = event["idempotency_key"]
                if key in received[i]:
                    duplicates[i] += 1
                else:
                    received[i][key] = came
            cursor = page["next_cursor"]
            progress.set()

    async def all_have(n: int, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while min(len(r) for r in received) < n:
            progress.clear()
            remaining = end - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(progress.wait(), remaining)
            except TimeoutError:
                return False
        return True

    started = time.monotonic()
    sent = 0
    async with aiohttp.ClientSession(
        base_url, headers=HEADERS, connector=aiohttp.TCPConnector(limit=readers),
        timeout=aiohttp.ClientTimeout(total=wait + 10),
    ) as read_session, load.session() as send_session:
        tasks = [asyncio.create_task(reader(i, read_session)) for i in range(readers)]
        try:
            await asyncio.sleep(1.0)  # every reader is waiting at the (empty) head
            for n in range(count):
                if time.monotonic() - started > deadline_s:
                    errors.append(f"sender stopped at the {deadline_s:.0f} s bound after {n} events")
                    break
                t0 = time.monotonic()
                if not await all_have(n, wait + 5):
                    errors.append(f"not every reader had event {n - 1} after {wait + 5:g} s")
                if n and time.monotonic() - t0 > 1.0:
                    late = [i for i, r in enumerate(received) if load.key(n - 1) not in r or
                            r[load.key(n - 1)] - acked.get(load.key(n - 1), 0) > 1.0]
                    stalled.append({"event": n - 1, "readers_late": late,
                                    "waited_s": round(time.monotonic() - t0, 2)})
                await asyncio.sleep(rng.uniform(*pause_ms) / 1000)
                answer = await load.send(send_session, n)
                statuses[answer.status] = statuses.get(answer.status, 0) + 1
                sent += 1
                if answer.status == 201:
                    acked[answer.key] = answer.answered
            await all_have(sent, wait + 5)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.monotonic() - started

    sent_keys = {load.key(n) for n in range(sent)}
    latencies = [r[k] - t for k, t in acked.items() for r in received if k in r]
    missed = sum(1 for k in acked for r in received if k not in r)
    strangers = sum(len(set(r) - sent_keys) for r in received)
    ms = [x * 1000 for x in latencies]
    return {
        "readers": readers,
        "wait_s": wait,
        "events_sent": sent,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "deliveries": len(latencies),
        "p50_ms": round(percentile(ms, 50), 2) if ms else None,
        "p90_ms": round(percentile(ms, 90), 2) if ms else None,
        "p99_ms": round(percentile(ms, 99), 2) if ms else None,
        "max_ms": round(max(ms), 2) if ms else None,
        "min_ms": round(min(ms), 2) if ms else None,
        "over_100ms": sum(1 for x in ms if x > 100),
        "over_1s": sum(1 for x in ms if x > 1000),
        "before_201": sum(1 for x in ms if x < 0),
        "missed": missed,
        "duplicates": sum(duplicates),
        "strangers": strangers,
        "reader_answers": sum(answers),
        "empty_answers": sum(empty_answers),
        "stalled": stalled[:20],
        "pause_ms": list(pause_ms),
        "seconds": round(elapsed, 1),
        "errors": errors[:20],
        "exactly_once": missed == 0 and sum(duplicates) == 0 and strangers == 0
        and len(acked) == sent and not errors,
    }


def measure_long_poll(url: str, workdir: Path, args: argparse.Namespace, run_id: str) -> dict[str, Any]:
    attempts = iter(range(100))

    def once() -> dict[str, Any]:
        with read_api_service(url, workdir, args.workers) as svc:
            asyncio.run(checkpoint(url))
            figure = asyncio.run(long_poll(svc.base_url, f"poll-{run_id}-{next(attempts)}", args.readers,
                                           args.poll_events, args.wait, tuple(args.poll_pause_ms),
                                           args.poll_deadline, args.rng_seed))
        figure["workers"] = args.workers
        return figure

    return guarded("long_poll", args, once)
