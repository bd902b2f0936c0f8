"""Fault-injection harness shared by bench/chaos.py and the fault tests.

* ``SignedLoad`` drives signed ingests, one new event per request, and
  records every answer: which keys got a 2xx is the promise to check.
* ``Service`` runs ``codex-ingest serve`` as a subprocess in a process group
  of its own, so ``kill9`` takes the supervisor and every worker at once.
* ``stored_copies`` reads how many rows each key has (sql/audit.sql).
* ``verdict`` compares what was acknowledged with what is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import asyncpg
import orjson

from bench.plan import load_payloads
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
        return body, {
            "Content-Type": "application/json",
            "X-Tenant-Id": self.tenant,
            "X-Signature": "sha256=" + hmac.new(self._key, body, hashlib.sha256).hexdigest(),
            "Idempotency-Key": self.key(n),
        }

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
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(load_queries().sql("stored_copies"), tenant, source)  # $1 tenant_id, $2 source
    finally:
        await conn.close()
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


@dataclass
class Service:
    """``codex-ingest serve`` in a process group (session) of its own, logging to a file."""

    database_url: str
    port: int
    secret: str
    log_path: Path
    workers: int = 2
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        clean = {k: v for k, v in os.environ.items() if k not in _SERVICE_ENV}
        env = {
            **clean,
            "DATABASE_URL": self.database_url,
            "WEBHOOK_SECRET": self.secret,
            "PORT": str(self.port),
            "WORKERS": str(self.workers),
            # kill -9 leaves the workers' metrics directory behind: keep it beside the log.
            "TMPDIR": str(self.log_path.parent),
            **self.env,
        }
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "codex_ingest", "serve", "--no-migrate"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill9 reaches every worker
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited at start with {self.proc.returncode}; see {self.log_path}")
            # Each worker listens (its own SO_REUSEPORT socket) only once its pool
            # is open; until all do, /readyz may come from the first one alone.
            if listeners(self.port) >= self.workers:
                try:
                    with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=1) as resp:
                        if resp.status == 200:
                            return
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"serve did not become ready; see {self.log_path}")

    def group(self) -> list[int]:
        """Live (not zombie) pids in the service's process group."""
        assert self.proc is not None
        return _live_in_group(self.proc.pid)

    def kill9(self, timeout: float = 10.0) -> int:
        """SIGKILL the supervisor and every worker at once; return how many processes there were."""
        assert self.proc is not None
        pids = self.group()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout)
        deadline = time.monotonic() + timeout
        while self.group() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.group():
            raise RuntimeError(f"processes survived SIGKILL: {self.group()}")
        self._close_log()
        return len(pids)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM to the service's main process only (it stops its workers); return its exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._close_log()
        return code

    def cleanup(self) -> None:
        """Leave nothing running (for finally blocks)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


_SERVICE_ENV = {
    "DATABASE_URL", "WEBHOOK_SECRET", "PORT", "HOST", "WORKERS", "LOG_LEVEL", "ACCESS_LOG", "BATCHING",
    "CODEX_DATA_DIR", "DB_POOL_MIN", "DB_POOL_MAX", "DB_CONNECT_TIMEOUT", "DB_COMMAND_TIMEOUT",
    "DB_WRITE_TIMEOUT", "SHUTDOWN_GRACE_SECONDS", "RETRY_AFTER_SECONDS", "CODEX_SOURCES",
}


def _live_in_group(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state, ppid, pgrp, ...
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            pids.append(int(entry.name))
    return pids


def listeners(port: int) -> int:
    """Sockets listening on a TCP port, from /proc/net/tcp and tcp6."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                count += 1
    return count
