"""Micro-batching: coalesce concurrent ingests into one statement per batch.

Requests hand their event to ``submit`` and wait. A batch is cut when
``max_rows`` events wait, or ``max_delay`` after the first one arrived, and
is written as soon as a database slot is free; while every slot is busy,
events keep gathering, so batches grow with load by themselves. Each
request is answered from its own batch's result, after that batch's single
commit. The SQL lives in store.EventStore.store_batch; this module only
gathers and hands out.

A request whose client went away stays in its batch: the batch commits or
not as a whole, and no answer is produced for a future nobody awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from codex_ingest.errors import DatabaseUnavailable, IngestError
from codex_ingest.intake import IncomingEvent
from codex_ingest.store import EventStore, StoreResult

log = logging.getLogger("codex_ingest.batching")


class EventWriter(Protocol):
    """What the ingest handler calls: store one event, answer when committed."""

    async def submit(self, event: IncomingEvent) -> StoreResult: ...

    async def close(self) -> None: ...


class DirectWriter:
    """Batching off: one INSERT per request, for comparison and as a fallback."""

    def __init__(self, store: EventStore) -> None:
        self._store = store

    async def submit(self, event: IncomingEvent) -> StoreResult:
        return await self._store.store_event(event)

    async def close(self) -> None:
        return None


_Pending = tuple[IncomingEvent, "asyncio.Future[StoreResult]"]


class BatchWriter:
    def __init__(
        self,
        store: EventStore,
        *,
        max_rows: int,
        max_delay: float,
        max_concurrent: int,
        retry_after: int,
    ) -> None:
        self._store = store
        self._max_rows = max_rows
        self._max_delay = max_delay
        self._retry_after = retry_after
        self._pending: list[_Pending] = []
        self._arrived = asyncio.Event()   # something is pending
        self._full = asyncio.Event()      # max_rows are pending
        self._slots = asyncio.Semaphore(max_concurrent)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._closing = False
        self._loop_task = asyncio.get_running_loop().create_task(self._cut_batches())

    async def submit(self, event: IncomingEvent) -> StoreResult:
        if self._closing:
            raise DatabaseUnavailable("the service is shutting down", retry_after=self._retry_after)
        future: asyncio.Future[StoreResult] = asyncio.get_running_loop().create_future()
        self._pending.append((event, future))
        self._arrived.set()
        if len(self._pending) >= self._max_rows:
            self._full.set()
        return await future

    async def close(self) -> None:
        """Write what is pending, wait for batches in flight, then stop."""
        self._closing = True
        self._arrived.set()
        self._full.set()
        await self._loop_task
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _cut_batches(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if len(self._pending) < self._max_rows and self._max_delay > 0 and not self._closing:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._max_delay):
                        await self._full.wait()
            await self._slots.acquire()
            batch = self._pending[: self._max_rows]
            del self._pending[: self._max_rows]
            task = asyncio.get_running_loop().create_task(self._write(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            results: list[StoreResult | IngestError] = await self._store.store_batch([e for e, _ in batch])
        except Exception as exc:
            # DatabaseUnavailable becomes each request's 503; anything else is
            # a bug, and each request's 500 (logged by the error middleware).
            results = [exc] * len(batch)  # type: ignore[list-item]
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # the request was cancelled; nobody waits
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
