"""Waking readers that wait at the head (GET /events?wait=N), across workers.

Each worker keeps one connection of its own (not from the pool: LISTEN is
session state, and the pool's connections keep none) that LISTENs on
``codex_events``. Each write whose transaction has ended calls ``poke()``
(it may have committed new events, or released the delivery horizon that
held others back: a batch of duplicates holds an xid too), which sends one
``NOTIFY`` (no payload) on that connection — after the commit, off the
write path: a burst of batches coalesces into one NOTIFY in flight and one
after it. Every worker's listener then wakes its waiting readers, and they
re-read. A reader marks the listener before each read, so a NOTIFY that
arrives while its read runs wakes its next wait at once.

A NOTIFY comes from the service's own writes. An event can also be held
back by a transaction that is not the service's (an open BEGIN, a long
migration, a purge chunk): nothing notifies when it ends. So while readers
wait, the listener also reads the delivery horizon once a second (one small
query per worker, only while someone waits, never per request) and wakes
them when it has moved.

Every notification wakes every waiting reader of the worker, whatever its
tenant, and each re-reads: the number of waiting readers is what each write
costs. So a worker keeps at most READ_MAX_WAITING of them (``place()``); a
read past that is answered at once instead of waiting (web/read.py). And
woken readers read again at most REREADS_AT_ONCE at a time (``rereads``), so
that a wake-up never puts the whole crowd in the pool's queue ahead of the
writes.

A notification carries no data and may be lost (the connection drops, the
process dies between a commit and its NOTIFY): that only delays a reader
until the next notification, horizon check or its own timeout, never loses
an event, because readers always re-read the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import asyncpg

from codex_ingest.storage.pool import SERVER_SETTINGS

log = logging.getLogger("codex_ingest.notify")

CHANNEL = "codex_events"
# Woken readers that read again at once, per worker. A wake-up sends every
# waiting reader to the pool at the same moment, and without this the writes
# queued behind them: 500 waiting readers took ingest's p99 from 7.5 ms to
# 139 ms; two at a time, 11.7 ms (bench/attack_readers.py). The later readers
# read a little later instead.
REREADS_AT_ONCE = 2
_RECONNECT_SECONDS = 1.0
HORIZON_CHECK_SECONDS = 1.0


class HeadWatch:
    """One worker's listener and notifier; readers ``wait()`` for new events."""

    def __init__(self, database_url: str, notify_sql: str, *, connect_timeout: float, horizon_sql: str = "") -> None:
        self._url = database_url
        self._notify_sql = notify_sql
        self._horizon_sql = horizon_sql
        self._connect_timeout = connect_timeout
        self._changed = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._poked = asyncio.Event()
        # NOTIFY and the horizon check share the listener connection: one statement at a time.
        self._statement = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.waiting = 0  # readers holding a place() now (a gauge)
        # Held by a woken reader while it reads again (web/read.py).
        self.rereads = asyncio.Semaphore(REREADS_AT_ONCE)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._keep_listening()), loop.create_task(self._send_notifies())]
        if self._horizon_sql:
            self._tasks.append(loop.create_task(self._watch_horizon()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def poke(self) -> None:
        """New events committed: have every worker's readers re-read (one NOTIFY, soon)."""
        self._poked.set()

    def mark(self) -> asyncio.Event:
        """Take before reading: ``wait(since=mark)`` then returns at once if
        events were committed while the read ran (no wake-up falls between a
        read that found nothing and the wait that follows it)."""
        return self._changed

    @contextlib.contextmanager
    def place(self, most: int) -> Iterator[bool]:
        """A place among the readers waiting at the head, held for the block, if
        fewer than ``most`` hold one: yields whether it got one. A reader holds
        its place from its first wait to its answer, re-reads included, so the
        cap is never passed while readers re-read."""
        if self.waiting >= most:
            yield False
            return
        self.waiting += 1
        try:
            yield True
        finally:
            self.waiting -= 1

    async def wait(self, timeout: float, since: asyncio.Event | None = None) -> bool:
        """Wait until new events may be deliverable or ``timeout`` passes; True when woken.
        A reader calls it while holding a ``place()``."""
        changed = since if since is not None else self._changed
        if changed.is_set():
            return True
        try:
            async with asyncio.timeout(timeout):
                await changed.wait()
            return True
        except TimeoutError:
            return False

    def _wake(self, *_: object) -> None:
        # Waiters hold the current event; a fresh one is for the next change.
        self._changed.set()
        self._changed = asyncio.Event()

    async def _keep_listening(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._url, timeout=self._connect_timeout,
                    server_settings={**SERVER_SETTINGS, "application_name": "codex-ingest-listener"},
                )
                closed = asyncio.Event()
                conn.add_termination_listener(lambda _, closed=closed: closed.set())
                await conn.add_listener(CHANNEL, self._wake)
                self._conn = conn
                # Events may have come while nobody listened: have readers look.
                self._wake()
                await closed.wait()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.debug("listener not connected", extra={"error": exc.__class__.__name__})
            finally:
                # Also on cancellation (close()): never leave the connection open.
                self._conn = None
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(_RECONNECT_SECONDS)

    async def _watch_horizon(self) -> None:
        last: str | None = None
        while True:
            await asyncio.sleep(HORIZON_CHECK_SECONDS)
            conn = self._conn
            if not self.waiting or conn is None:
                last = None
                continue
            try:
                async with self._statement:
                    horizon = await conn.fetchval(self._horizon_sql)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.debug("horizon check failed", extra={"error": exc.__class__.__name__})
                continue
            # The first check after readers start waiting wakes them too: the
            # horizon may have moved between their read and this check, and
            # "last" knows nothing of what they saw.
            if horizon != last:
                self._wake()
            last = horizon

    async def _send_notifies(self) -> None:
        while True:
            await self._poked.wait()
            self._poked.clear()
            conn = self._conn
            if conn is None:
                continue  # no listener connection: readers fall back to their timeouts
            try:
                async with self._statement:
                    await conn.execute(self._notify_sql)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.debug("NOTIFY failed", extra={"error": exc.__class__.__name__})
