"""Fault-injection harness shared by bench/chaos.py and the fault tests.

* ``SignedLoad`` drives signed ingests, one new event per request, and
  records every answer: which keys got a 2xx is the promise to check.
* ``stored_copies`` reads how many rows each key has (sql/audit.sql).
* ``verdict`` compares what was acknowledged with what is stored.

The service it is run against, ``Service`` (``codex-ingest serve`` in a
process group of its own, so ``kill9`` takes the supervisor and every worker
at once), lives in bench/service.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bench.database import connection
from bench.plan import load_payloads, signed_headers
from codex_ingest.storage.queries import load_queries

SOURCE = "chaos"


@dataclass(frozen=True, slots=True)
class Answer:
    key: str
    status: int            # HTTP status; 0 when no answer came (refused, reset, timed out)
    sent: float            # time.monotonic() when the request was sent
    answered: float        # ... and when its answer (or error) came
    retry_after: str | None = None
    error: str | None = None

    @property
    def acknowledged(self) -> bool:
        return 200 <= self.status < 300

    @property
    def seconds(self) -> float:
        return self.answered - self.sent


@dataclass
class SignedLoad:
    """Signed POSTs of new events to ``url``, ``concurrency`` at a time, until stopped.

    Event n has the key ``<run_id>-<n>`` and a provider-shaped body carrying
    that key; the same n always gives the same bytes, so a resend is a true
    duplicate.
    """

    url: str
    secret: str
    tenant: str = ""              # default: chaos-<run_id>, so runs sharing a database never meet
    concurrency: int = 8
    pause: float = 0.0            # seconds each sender waits between requests
    timeout: float = 30.0         # client-side bound on one request
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    answers: list[Answer] = field(default_factory=list)
    _next: int = 0

    def __post_init__(self) -> None:
        self.tenant = self.tenant or f"chaos-{self.run_id}"
        self._shapes = load_payloads()
        self._key = self.secret.encode()

    def key(self, n: int) -> str:
        return f"{self.run_id}-{n}"

    def request(self, n: int) -> tuple[bytes, dict[str, str]]:
        doc = dict(self._shapes[n % len(self._shapes)])
        doc["chaos_event"] = self.key(n)
        body = orjson.dumps(doc)
        return body, signed_headers(self._key, body, self.tenant, self.key(n))

    async def send(self, session: aiohttp.ClientSession, n: int) -> Answer:
        body, headers = self.request(n)
        sent = time.monotonic()
        try:
            async with session.post(self.url, data=body, headers=headers) as resp:
                await resp.read()
                answer = Answer(self.key(n), resp.status, sent, time.monotonic(), resp.headers.get("Retry-After"))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            answer = Answer(self.key(n), 0, sent, time.monotonic(), error=type(exc).__name__)
        self.answers.append(answer)
        return answer

    async def run(self, stop: asyncio.Event) -> None:
        """Send new events until ``stop`` is set; every answer lands in ``answers``."""
        async with self.session() as session:

            async def sender() -> None:
                while not stop.is_set():
                    n, self._next = self._next, self._next + 1
                    answer = await self.send(session, n)
                    if self.pause or not answer.acknowledged:
                        # A refused connection or a 503 returns at once: do not spin.
                        await asyncio.sleep(self.pause or 0.02)

            await asyncio.gather(*(sender() for _ in range(self.concurrency)))

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        )

    @property
    def sent_keys(self) -> set[str]:
        return {a.key for a in self.answers}

    @property
    def acknowledged(self) -> set[str]:
        return {a.key for a in self.answers if a.acknowledged}

    @property
    def unacknowledged(self) -> set[str]:
        return self.sent_keys - self.acknowledged

    async def resend(self, keys: Iterable[str]) -> list[Answer]:
        """Send these keys' events again (same bytes), a few at a time."""
        numbers = sorted(int(k.rsplit("-", 1)[1]) for k in keys)
        async with self.session() as session:
            gate = asyncio.Semaphore(self.concurrency)

            async def one(n: int) -> Answer:
                async with gate:
                    return await self.send(session, n)

            return list(await asyncio.gather(*(one(n) for n in numbers)))


async def stored_copies(database_url: str, tenant: str, source: str = SOURCE) -> dict[str, int]:
    """Rows per idempotency key for one tenant and source."""
    async with connection(database_url) as conn:
        rows = await conn.fetch(load_queries().sql("stored_copies"), tenant, source)  # $1 tenant_id, $2 source
    return {r["idempotency_key"]: r["copies"] for r in rows}


def verdict(load: SignedLoad, copies: dict[str, int]) -> dict[str, Any]:
    """What was promised against what is stored: lost and doubled must be 0."""
    acknowledged = load.acknowledged
    return {
        "sent": len(load.sent_keys),
        "acknowledged": len(acknowledged),
        "lost": len(acknowledged - copies.keys()),
        "doubled": sum(1 for c in copies.values() if c > 1),
        "stranger": len(copies.keys() - load.sent_keys),  # stored, yet never sent: impossible
        "unacknowledged": len(load.unacknowledged),
        "stored_unacknowledged": len(load.unacknowledged & copies.keys()),
        "statuses": status_counts(load.answers),
    }


def status_counts(answers: Iterable[Answer]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for a in answers:
        label = str(a.status) if a.status else (a.error or "no_answer")
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


# -- the service as a subprocess ---------------------------------------------
