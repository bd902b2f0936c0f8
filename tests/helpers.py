"""Small helpers shared by the tests: signing, payloads, posting."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import asyncpg

PAYLOADS = Path(__file__).resolve().parent.parent / "bench" / "payloads"
SECRET = "test-secret-\u00e9-rotate-me"
# A read API token (CODEX_API_TOKENS) of the live service, allowed every tenant.
READ_TOKEN = "test-read-token-0123456789"


def sign(body: bytes, secret: str = SECRET) -> str:
    # Written out here, not borrowed from the service's verifier, so the
    # tests check the service against an independent signer.
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def payload(name: str) -> bytes:
    return (PAYLOADS / f"{name}.json").read_bytes()


PROVIDER_PAYLOADS = sorted(p.stem for p in PAYLOADS.glob("*.json"))


def headers(body: bytes, tenant: str | None = "tenant-1", **extra: str) -> dict[str, Any]:
    out: dict[str, Any] = {"Content-Type": "application/json", "X-Signature": sign(body)}
    if tenant is not None:
        out["X-Tenant-Id"] = tenant
    out.update(extra)
    return out


async def stored(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM events ORDER BY id")


async def assert_error(resp, status: int, code: str) -> dict:
    """The answer is our JSON error shape with this status and code."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    doc = await resp.json()
    assert doc["error"] == code
    assert doc["detail"]
    return doc
