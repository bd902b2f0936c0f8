"""Small helpers shared by the tests: signing, payloads, posting, waiting."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

PAYLOADS = Path(__file__).resolve().parent.parent / "bench" / "payloads"
SECRET = "test-secret-\u00e9-rotate-me"
# A read API token (CODEX_API_TOKENS) of the live service, allowed every tenant.
READ_TOKEN = "test-read-token-0123456789"

T = TypeVar("T")


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


async def metric_samples(client) -> dict[str, float]:
    """The service's unlabelled samples on GET /metrics (an aiohttp TestClient): name -> value."""
    text = await (await client.get("/metrics")).text()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples if not s.labels}


async def readers_waiting(client) -> float:
    """codex_ingest_readers_waiting: how many GET /events?wait=N are parked at the head right now."""
    return (await metric_samples(client))["codex_ingest_readers_waiting"]


@asynccontextmanager
async def in_background(coro: Coroutine[Any, Any, T]) -> AsyncIterator[asyncio.Task[T]]:
    """``coro`` as a task while the block runs (a request left waiting, say).
    Leaving the block, a task still running is cancelled and awaited, so a
    failing test leaves no task behind to fail later in someone else's hands."""
    task = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        task.cancel()  # nothing, if it is done
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: a failure the test did not await is not logged again


async def until(check: Callable[[], T | Awaitable[T]], what: str, timeout: float = 30.0) -> T:
    """Wait for a condition, not for a guessed duration: ``check()``'s first
    truthy answer (awaited when it is a coroutine), polled; fails after
    ``timeout`` seconds saying what never happened and the last answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        answer = check()
        if inspect.isawaitable(answer):
            answer = await answer
        if answer:
            return answer  # type: ignore[return-value]
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {answer!r})")
        await asyncio.sleep(0.02)


def wait_until(check: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """until() for synchronous tests: ``check()``'s first truthy answer, polled."""
    deadline = time.monotonic() + timeout
    while not (answer := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {answer!r})")
        time.sleep(0.02)
    return answer
