"""A signed request plan: U distinct events, N requests in all, shuffled;
and how the benches sign a body."""

from __future__ import annotations

import hashlib
import hmac
import random
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson

PAYLOADS = Path(__file__).resolve().parent / "payloads"
SOURCE = "square"  # the source the benches post planned requests to: /pos/square/ingest


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    event: int                 # index of the distinct event, 0..unique-1
    body: bytes
    headers: dict[str, str]


def load_payloads() -> list[dict]:
    return [orjson.loads(p.read_bytes()) for p in sorted(PAYLOADS.glob("*.json"))]


def signature(key: bytes, body: bytes) -> str:
    """The X-Signature the service's generic scheme checks: HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def signed_headers(key: bytes, body: bytes, tenant: str, idempotency_key: str) -> dict[str, str]:
    """The headers of one signed single-event ingest."""
    return {
        "Content-Type": "application/json",
        "X-Tenant-Id": tenant,
        "X-Signature": signature(key, body),
        "Idempotency-Key": idempotency_key,
    }


def build_plan(
    *, total: int, unique: int, tenant: str, secret: str, seed: int | None = None, run_id: str | None = None
) -> tuple[str, list[PlannedRequest]]:
    """Every distinct event is sent at least once; the rest are repeats chosen at random.

    Keys and bodies carry a per-run id, so a run never collides with rows
    left by an earlier one.
    """
    if not 1 <= unique <= total:
        raise ValueError("need 1 <= unique <= total")
    rng = random.Random(seed)
    run_id = run_id or uuid.uuid4().hex[:12]
    shapes = load_payloads()
    key = secret.encode()
    events: list[tuple[bytes, dict[str, str]]] = []
    for i in range(unique):
        doc = dict(shapes[i % len(shapes)])
        doc["bench_event"] = f"{run_id}-{i}"
        body = orjson.dumps(doc)
        events.append((body, signed_headers(key, body, tenant, f"bench-{run_id}-{i}")))
    order = list(range(unique)) + [rng.randrange(unique) for _ in range(total - unique)]
    rng.shuffle(order)
    return run_id, [PlannedRequest(i, events[i][0], events[i][1]) for i in order]
