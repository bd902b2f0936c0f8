"""Helpers for the provider tests: payloads, an injectable clock, and
signers written out here from each provider's documentation (not borrowed
from the service), so the service is checked against an independent signer.
Where the provider publishes a Python library, the tests use that library too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families

PAYLOADS = Path(__file__).resolve().parent / "payloads"


def payload(name: str) -> bytes:
    return (PAYLOADS / f"{name}.json").read_bytes()


class FakeClock:
    """A clock the test sets; the app's timestamped schemes read it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def b64_hmac(secret: str | bytes, *parts: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return base64.b64encode(hmac.new(key, b"".join(parts), hashlib.sha256).digest()).decode()


def square_signature(key: str, url: str, body: bytes) -> str:
    return b64_hmac(key, url.encode(), body)


def shopify_signature(secret: str, body: bytes) -> str:
    return b64_hmac(secret, body)


def toast_signature(secret: str, body: bytes) -> str:
    timestamp = orjson.loads(body)["timestamp"]
    return b64_hmac(secret, body, timestamp.encode())




async def events_total(client, source: str) -> dict[str, float]:
    """codex_ingest_events_total for one source: {outcome: count}, the outcomes
    counted so far (a source's other outcomes are exported too, at 0)."""
    text = await (await client.get("/metrics")).text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "codex_ingest_events_total" and s.labels.get("source") == source and s.value:
                out[s.labels["outcome"]] = s.value
    return out
