"""1. read: N events of one tenant (seeded by SQL, in transactions of 1-512
rows, like micro-batches), read back over HTTP by following next_cursor with
limit=1000; events/s and pages/s; every event read exactly once."""

from __future__ import annotations

import argparse
import asyncio
import base64
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.database import checkpoint
from bench.output import log
from bench.read_side.api import HEADERS, read_api_service
from bench.read_side.quiet import guarded
from bench.read_side.seeding import body_prefixes, expected_body, fetch_ids, seed, vacuum_analyze
from codex_ingest.storage.delivery import Cursor


async def read_all(base_url: str, tenant: str, limit: int, deadline_s: float) -> dict[str, Any]:
    """Follow next_cursor from the start until an empty page; every event's id, key and a sample of bodies."""
    ids: list[int] = []
    keys: list[str] = []
    sample_bodies: list[tuple[str, str]] = []
    cursors: list[Cursor] = []
    errors: list[str] = []
    pages = 0
    cursor: str | None = None
    async with aiohttp.ClientSession(
        base_url, headers=HEADERS, timeout=aiohttp.ClientTimeout(total=60),
    ) as session:
        started = time.perf_counter()
        while time.perf_counter() - started < deadline_s:
            params = {"tenant": tenant, "limit": str(limit)} | ({"after": cursor} if cursor else {})
            async with session.get("/events", params=params) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    errors.append(f"{resp.status} {raw[:200]!r}")
                    break
            page = orjson.loads(raw)
            pages += 1
            events = page["events"]
            for event in events:
                ids.append(event["event_id"])
                keys.append(event["idempotency_key"])
                if event["event_id"] % 101 == 0:
                    sample_bodies.append((event["idempotency_key"], event["body_base64"]))
            cursor = page["next_cursor"]
            cursors.append(Cursor.decode(cursor))
            if not events:
                break
        else:
            errors.append(f"stopped at the {deadline_s:.0f} s bound")
        elapsed = time.perf_counter() - started
    return {"ids": ids, "keys": keys, "sample_bodies": sample_bodies, "cursors": cursors, "pages": pages,
            "seconds": elapsed, "errors": errors}


def measure_read(url: str, workdir: Path, args: argparse.Namespace, run_id: str) -> dict[str, Any]:
    tenant = f"read-{run_id}"
    key_prefix = f"seed-{run_id}-"
    log(f"read: seeding {args.seed_events:,} events for {tenant}")
    seeded = asyncio.run(seed(url, tenant, args.seed_events, key_prefix=key_prefix))
    seeded["vacuum_analyze_s"] = asyncio.run(vacuum_analyze(url))
    stored = asyncio.run(fetch_ids(url, tenant))
    return guarded("read", args, lambda: read_once(url, workdir, args, tenant, key_prefix, stored, seeded))


def read_once(url: str, workdir: Path, args: argparse.Namespace, tenant: str, key_prefix: str, stored: set[int],
              seeded: dict[str, Any]) -> dict[str, Any]:
    with read_api_service(url, workdir, args.workers) as svc:
        asyncio.run(checkpoint(url))
        got = asyncio.run(read_all(svc.base_url, tenant, args.limit, args.read_deadline))
    ids = got["ids"]
    prefixes = body_prefixes()
    bad_keys = sum(1 for k in got["keys"] if not k.startswith(key_prefix))
    bad_bodies = sum(
        1 for key, b64 in got["sample_bodies"]
        if base64.b64decode(b64) != expected_body(prefixes, key_prefix, int(key[len(key_prefix):]))
    )
    cursors = got["cursors"]
    events = len(ids)
    figure = {
        "tenant_events": args.seed_events,
        "limit": args.limit,
        "workers": args.workers,
        "events_read": events,
        "pages": got["pages"],
        "seconds": round(got["seconds"], 2),
        "events_per_s": round(events / got["seconds"]),
        "pages_per_s": round(got["pages"] / got["seconds"], 1),
        "mb_per_s_of_bodies": round(events * seeded["avg_body_bytes"] / got["seconds"] / 2**20, 1),
        "distinct_ids": len(set(ids)),
        "duplicates": events - len(set(ids)),
        "missing": len(stored - set(ids)),
        "strangers": len(set(ids) - stored),
        "cursors_increasing": all(a < b for a, b in pairwise(cursors[:-1]))
        and (len(cursors) < 2 or cursors[-1] == cursors[-2]),
        "ids_ascending": all(a < b for a, b in pairwise(ids)),
        "bad_keys": bad_keys,
        "bodies_checked": len(got["sample_bodies"]),
        "bad_bodies": bad_bodies,
        "errors": got["errors"],
        "seed": seeded,
    }
    figure["exactly_once"] = (
        figure["duplicates"] == 0 and figure["missing"] == 0 and figure["strangers"] == 0 and events == len(stored)
        and not got["errors"] and bad_keys == 0 and bad_bodies == 0
    )
    return figure
