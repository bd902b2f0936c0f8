"""The delivery engine: in every worker, for each destination, a scheduler
that turns the combined feed into delivery rows, and a sender that claims
due rows with a lease, POSTs them and records the outcome
(docs/delivery.md).

Workers and replicas share the work through PostgreSQL alone: the
scheduler's position is locked per destination (SKIP LOCKED), a sender's
rows are leased with a token of its own, and no transaction is held open
across an HTTP call. A worker whose lease ran out records nothing over the
newer one's (sql/delivery.sql record_results).

Each destination runs on its own tasks, its own HTTP session and its own
in-flight cap: one that hangs, fails or is disabled never delays another's
deliveries; in parallel mode one failing event never delays the events
behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import orjson

from codex_ingest.delivery.config import ALL, DestinationSpec
from codex_ingest.delivery.signing import Signer
from codex_ingest.delivery.ssrf import DestinationRefused, check_url, make_session
from codex_ingest.storage.notify import HeadWatch
from codex_ingest.storage.queries import Queries

log = logging.getLogger("codex_ingest.delivery")

# Events the scheduler looks at in one transaction; rows a sender claims at once at most.
SCHEDULE_BATCH = 500
# Seconds a lease outlives the attempt's own timeout: a sender that died is taken over after it.
LEASE_MARGIN_SECONDS = 5.0
# The longest a loop sleeps with nothing to do: covers a lost NOTIFY and a retry coming due.
IDLE_POLL_SECONDS = 1.0
# What is kept of a response in the attempt log.
EXCERPT_BYTES = 1024
JITTER = 0.2  # retries are spread ±20%
# The throttle's window. The promise is about what the destination receives in any one second,
# and a request reaches it a little after its slot was taken (signing, the event loop, the
# network), by an amount that varies: a window 100 ms longer than a second absorbs that spread,
# for a rate about 9% under max_per_second at saturation.
THROTTLE_WINDOW_SECONDS = 1.1
GAUGE_SECONDS = 5.0
# The shortest time between two scheduling transactions of a destination in a worker: under a
# steady stream of commits (each one a NOTIFY) one transaction takes what came in meanwhile,
# rather than one each, for at most this much added latency.
SCHEDULE_INTERVAL_SECONDS = 0.02


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt went, and what the delivery row becomes."""

    state: str                 # delivered | pending (retried later) | parked
    next_at: datetime | None   # when pending: the next attempt
    status: int | None         # the HTTP status, None without an answer
    error: str | None          # why there was no 2xx, in a few words
    disable: bool = False      # 410 Gone: the destination is disabled at once


def judge(status: int | None, error: str | None, attempt: int, schedule: tuple[float, ...], now: datetime,
          retry_after: float | None = None, rng: Callable[[], float] = random.random) -> Outcome:
    """The outcome of attempt number ``attempt`` (1 the first) that answered
    ``status`` (None: no answer, ``error`` says why)."""
    if status is not None and 200 <= status < 300:
        return Outcome("delivered", None, status, None)
    if status == 410:
        # The receiver says the endpoint is gone: stop sending there until an operator says otherwise.
        # The row stays pending, due again when the destination is enabled.
        return Outcome("pending", now, status, "410 Gone: destination disabled", disable=True)
    if attempt > len(schedule):
        return Outcome("parked", None, status, error or f"HTTP {status}")
    if status in (429, 503) and retry_after is not None:
        # Honoured, within the schedule's bounds: a receiver cannot stall us for days, nor hurry us.
        wait = min(max(retry_after, min(schedule)), max(schedule))
    else:
        wait = schedule[attempt - 1] * (1 + JITTER * (2 * rng() - 1))
    return Outcome("pending", now + timedelta(seconds=wait), status, error or f"HTTP {status}")


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After in seconds (the delta form only; a date is ignored)."""
    if value is None or not value.strip().isascii() or not value.strip().isdigit():
        return None
    return float(value.strip())


@dataclass
class _Destination:
    spec: DestinationSpec
    signer: Signer
    session: aiohttp.ClientSession
    in_flight: int = 0
    due: asyncio.Event = field(default_factory=asyncio.Event)  # scheduled rows, or a slot freed
    # The last claim filled every free slot: more may be due, so a finished send wakes the sender.
    saturated: bool = False
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # Outcomes waiting to be written, each with the future its sender awaits; and the writer's task.
    outcomes: list[tuple[asyncpg.Record, uuid.UUID, Outcome, float, str | None, asyncio.Future[bool]]] = field(
        default_factory=list)
    writer: asyncio.Task[None] | None = None


class DeliveryEngine:
    """One worker's share of push delivery to every destination."""

    def __init__(
        self, pool: asyncpg.Pool, queries: Queries, destinations: Mapping[str, DestinationSpec], *,
        watch: HeadWatch | None = None, record: Callable[[str, str, float], None] | None = None,
        gauges: Callable[[asyncpg.Record], None] | None = None, clock: Callable[[], float] = time.time,
    ) -> None:
        """``record(destination, outcome, seconds)``: a metrics hook for each attempt (outcome:
        delivered, retried, parked, expired, disabled). ``gauges(row)``: called every
        GAUGE_SECONDS with each destination's row of sql/delivery.sql delivery_gauges."""
        self._pool = pool
        self._sql = {name: queries.sql(name) for name in (
            "ensure_destination", "lock_schedule", "schedule", "move_position", "claim_parallel",
            "claim_ordered", "record_results", "throttle_lock", "throttle_slot", "renew_lease",
            "set_destination_state",
            "delivery_gauges",
        )}
        self._specs = destinations
        self._watch = watch
        self._record = record
        self._gauges = gauges
        self._clock = clock
        self._destinations: dict[str, _Destination] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for name, spec in self._specs.items():
            async with self._pool.acquire() as conn:
                await conn.execute(
                    self._sql["ensure_destination"],
                    name,                                                    # $1 name
                    None if spec.sources == (ALL,) else list(spec.sources),  # $2 sources, or None: all
                    None if spec.tenants == (ALL,) else list(spec.tenants),  # $3 tenants, or None: all
                )
            session = make_session(allow_private_network=spec.allow_private_network, timeout=spec.timeout_seconds)
            destination = _Destination(spec, Signer(spec.secrets), session)
            self._destinations[name] = destination
            self._tasks.append(loop.create_task(self._schedule_loop(name, destination)))
            self._tasks.append(loop.create_task(self._send_loop(name, destination)))
        if self._gauges is not None:
            self._tasks.append(loop.create_task(self._gauge_loop()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for destination in self._destinations.values():
            for task in [*destination.tasks, *([destination.writer] if destination.writer else [])]:
                task.cancel()
        await asyncio.gather(*self._tasks, *(t for d in self._destinations.values() for t in d.tasks),
                             *(d.writer for d in self._destinations.values() if d.writer), return_exceptions=True)
        for destination in self._destinations.values():
            await destination.session.close()

    # -- scheduling -------------------------------------------------------------------------

    async def _schedule_loop(self, name: str, destination: _Destination) -> None:
        while True:
            since = self._watch.mark() if self._watch is not None else None
            try:
                examined, scheduled = await self._schedule(name)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("scheduling failed; retrying", extra={"destination": name, "error": _describe(exc)})
                examined = scheduled = 0
            if scheduled:
                destination.due.set()
            if examined < SCHEDULE_BATCH:
                await self._idle(since)
                await asyncio.sleep(SCHEDULE_INTERVAL_SECONDS)

    async def schedule_once(self, name: str) -> int:
        """One scheduling transaction for ``name``: the events it looked at (0: none past its position,
        or another worker holds the position now)."""
        return (await self._schedule(name))[0]

    async def _schedule(self, name: str) -> tuple[int, int]:
        """One scheduling transaction: (events looked at, deliveries scheduled)."""
        spec = self._specs[name]
        async with self._pool.acquire() as conn, conn.transaction():
            position = await conn.fetchrow(self._sql["lock_schedule"], name)  # $1 name
            if position is None:
                return 0, 0
            row = await conn.fetchrow(
                self._sql["schedule"],
                name,                                   # $1 destination
                position["xact"],                       # $2 after xact
                position["id"],                         # $3 after id
                None if spec.sources == (ALL,) else list(spec.sources),  # $4 sources, or None: all
                None if spec.tenants == (ALL,) else list(spec.tenants),  # $5 tenants, or None: all
                SCHEDULE_BATCH,                         # $6 limit
            )
            if row["id"] is None:
                return 0, 0
            await conn.execute(
                self._sql["move_position"],
                name, row["xact"], row["id"], position["stamp"], 0,  # $1 name, $2 xact, $3 id, $4 stamp, $5 expired
            )
            return int(row["examined"]), int(row["scheduled"])

    # -- sending ----------------------------------------------------------------------------

    async def _send_loop(self, name: str, destination: _Destination) -> None:
        spec = destination.spec
        claim = self._sql["claim_ordered" if spec.ordered else "claim_parallel"]
        lease_seconds = spec.timeout_seconds + LEASE_MARGIN_SECONDS
        # With every slot busy, claim again once this many are free: one statement claims several rows.
        refill = max(1, spec.max_in_flight // 4)
        while True:
            destination.due.clear()
            free = spec.max_in_flight - destination.in_flight
            rows: list[asyncpg.Record] = []
            if free > 0:
                token = uuid.uuid4()
                try:
                    async with self._pool.acquire() as conn:
                        # $1 destination, $2 lease token, $3 limit, $4 lease seconds
                        rows = await conn.fetch(claim, name, token, free, lease_seconds)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                    log.warning("claiming failed; retrying", extra={"destination": name, "error": _describe(exc)})
                for row in rows:
                    destination.in_flight += 1
                    task = asyncio.get_running_loop().create_task(self._deliver(name, destination, row, token))
                    destination.tasks.add(task)
                    task.add_done_callback(destination.tasks.discard)
            destination.saturated = bool(rows) and len(rows) == free
            if destination.saturated:
                # Every slot busy: finished sends free them.
                while spec.max_in_flight - destination.in_flight < refill:
                    destination.due.clear()
                    await destination.due.wait()
            elif not rows:
                # asyncio.timeout, not wait_for: on Python 3.11, wait_for returns the inner result
                # when it is cancelled in the turn that result arrived, so close() waited forever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_POLL_SECONDS):
                        await destination.due.wait()

    async def _deliver(self, name: str, destination: _Destination, row: asyncpg.Record, token: uuid.UUID) -> None:
        spec = destination.spec
        released = False

        def release() -> None:
            # The request is over: its slot is free for the next one while the outcome is written
            # (the row stays leased until then, so no other claim can take it meanwhile).
            nonlocal released
            if not released:
                released = True
                destination.in_flight -= 1
                if destination.saturated:  # every slot was busy: more may be due
                    destination.due.set()

        try:
            if row["body"] is None:  # retention deleted the event before it was sent
                await self._finish(name, destination, row, token,
                                   Outcome("expired", None, None, "deleted by retention"), 0.0)
                return
            if spec.max_per_second is not None and not await self._throttle(name, row, token, spec):
                log.info("lease lost while waiting for a throttle slot: not sent",
                         extra={"destination": name, "event_id": row["event_id"]})
                return
            body = bytes(row["body"])
            headers = destination.signer.headers(
                event_id=row["event_id"], tenant_id=row["tenant_id"], source=row["source"],
                idempotency_key=row["idempotency_key"], content_type=row["content_type"],
                stored_headers=None if row["headers"] is None else orjson.loads(row["headers"]),
                body=body, now=int(self._clock()),
            )
            started = time.perf_counter()
            status, error, excerpt, retry_after = await self._post(destination, body, headers)
            seconds = time.perf_counter() - started
            release()
            outcome = judge(status, error, row["attempts"], spec.retry_schedule, datetime.now(UTC), retry_after)
            await self._finish(name, destination, row, token, outcome, seconds, excerpt)
            if outcome.state == "pending" and outcome.next_at is not None and not outcome.disable:
                # A retry due sooner than the idle poll: wake the sender then, not at its next poll.
                wait = (outcome.next_at - datetime.now(UTC)).total_seconds()
                if wait < IDLE_POLL_SECONDS:
                    asyncio.get_running_loop().call_later(max(0.0, wait) + 0.005, destination.due.set)
            if outcome.disable:
                async with self._pool.acquire() as conn:
                    # $1 name, $2 state, $3 reason
                    await conn.execute(self._sql["set_destination_state"], name, "disabled", "410 Gone from the destination")
                log.warning("destination answered 410 Gone: disabled", extra={"destination": name})
        except asyncio.CancelledError:
            raise
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            # The database failed us: the row's lease runs out and another attempt sends it again.
            log.warning("recording a delivery failed; it will be sent again",
                        extra={"destination": name, "event_id": row["event_id"], "error": _describe(exc)})
        except Exception:
            # A bug: the row's lease runs out and another attempt takes it; say so loudly.
            log.exception("delivery failed unexpectedly", extra={"destination": name})
        finally:
            release()
            if spec.ordered:  # recorded: the tenant's next event is its head now
                destination.due.set()

    async def _post(self, destination: _Destination, body: bytes, headers: dict[str, str],
                    ) -> tuple[int | None, str | None, str | None, float | None]:
        """(status, error, response excerpt, Retry-After seconds) of one POST; never raises for the network."""
        url = destination.spec.url
        try:
            check_url(url, allow_private=destination.spec.allow_private_network)
            async with destination.session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                # Untrusted text: NUL cannot be stored in a text column, so it is replaced like bad UTF-8.
                excerpt = (await resp.content.read(EXCERPT_BYTES)).decode("utf-8", "replace").replace("\x00", "\ufffd")
                return resp.status, None, excerpt, retry_after_seconds(resp.headers.get("Retry-After"))
        except DestinationRefused as exc:
            return None, str(exc), None, None
        except TimeoutError:
            return None, f"no answer within {destination.spec.timeout_seconds:g} s", None, None
        except (aiohttp.ClientError, OSError) as exc:
            return None, _describe(exc), None, None

    async def _throttle(self, name: str, row: asyncpg.Record, token: uuid.UUID, spec: DestinationSpec) -> bool:
        """Wait for a send slot: at most ``max_per_second`` requests in any one second, across every
        worker. A queue behind a slow throttle can wait longer than a lease lasts, so the lease is
        renewed on each wait; False when it was lost meanwhile (the send must not happen)."""
        lease_seconds = spec.timeout_seconds + LEASE_MARGIN_SECONDS
        while True:
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    await conn.execute(self._sql["throttle_lock"], name)  # $1 destination
                    # $1 destination, $2 most requests a second, $3 window seconds
                    if await conn.fetchval(self._sql["throttle_slot"], name, spec.max_per_second,
                                           THROTTLE_WINDOW_SECONDS):
                        return True
                # $1 destination, $2 event_id, $3 lease token, $4 lease seconds
                if await conn.fetchval(self._sql["renew_lease"], name, row["event_id"], token, lease_seconds) is None:
                    return False
            await asyncio.sleep(random.uniform(0.5, 1.0) / spec.max_per_second)

    async def _finish(self, name: str, destination: _Destination, row: asyncpg.Record, token: uuid.UUID,
                      outcome: Outcome, seconds: float, excerpt: str | None = None) -> None:
        """Record an attempt: queued for the destination's writer, which writes every outcome that
        came in while it was writing the last ones in one statement and one commit."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        destination.outcomes.append((row, token, outcome, seconds, excerpt, done))
        if destination.writer is None:
            destination.writer = asyncio.get_running_loop().create_task(self._write_outcomes(name, destination))
        if not await done:
            log.info("a newer lease holds this delivery: result not recorded",
                     extra={"destination": name, "event_id": row["event_id"]})
        if self._record is not None:
            self._record(name, _outcome_label(outcome), seconds)

    async def _write_outcomes(self, name: str, destination: _Destination) -> None:
        try:
            while destination.outcomes:
                batch, destination.outcomes = destination.outcomes, []
                try:
                    async with self._pool.acquire() as conn:
                        recorded = {r["event_id"] for r in await conn.fetch(
                            self._sql["record_results"],
                            name,                                                  # $1 destination
                            [b[0]["event_id"] for b in batch],                     # $2 event ids
                            [b[1] for b in batch],                                 # $3 lease tokens
                            [b[2].state for b in batch],                           # $4 states
                            [b[2].next_at for b in batch],                         # $5 next attempt at
                            [b[2].status for b in batch],                          # $6 statuses
                            [b[2].error for b in batch],                           # $7 errors
                            [b[0]["tenant_id"] for b in batch],                    # $8 tenants
                            [b[0]["attempts"] for b in batch],                     # $9 attempt numbers
                            [b[3] * 1000.0 for b in batch],                        # $10 durations in ms
                            [b[4] for b in batch],                                 # $11 excerpts
                        )}
                except Exception as exc:  # each sender handles it (_deliver)
                    for *_, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                for row, *_, done in batch:
                    if not done.done():
                        done.set_result(row["event_id"] in recorded)
        finally:
            destination.writer = None

    async def _gauge_loop(self) -> None:
        assert self._gauges is not None
        while True:
            try:
                async with self._pool.acquire() as conn:
                    for row in await conn.fetch(self._sql["delivery_gauges"]):
                        self._gauges(row)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.debug("delivery gauges not refreshed", extra={"error": _describe(exc)})
            await asyncio.sleep(GAUGE_SECONDS)

    async def _idle(self, since: asyncio.Event | None) -> None:
        if self._watch is not None and since is not None:
            await self._watch.wait(IDLE_POLL_SECONDS, since)
        else:
            await asyncio.sleep(IDLE_POLL_SECONDS)


def _outcome_label(outcome: Outcome) -> str:
    if outcome.disable:
        return "disabled"
    return "retried" if outcome.state == "pending" else outcome.state


def _describe(exc: BaseException) -> str:
    return exc.__class__.__name__
