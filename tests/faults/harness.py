"""Helpers of the fault tests: start services, hold an event's key, settle the load, and the recovery bound."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from bench.faults import SOURCE, SignedLoad, status_counts, stored_copies
from bench.local import free_port
from bench.service import Service
from tests.db_faults import HeldKey, hold_key
from tests.helpers import SECRET

# The spec: ingest is back by itself within 5 s of the database being back.
RECOVERY_BOUND = 5.0


@contextmanager
def service_factory(log_dir: Path, **base_env: str) -> Iterator[Callable[..., Service]]:
    """Makes ``codex-ingest serve`` subprocesses (bench/service.Service) on free
    ports, each logging to a file of its own; all are cleaned up on exit."""
    services: list[Service] = []

    def make(database_url: str, workers: int, **env: str) -> Service:
        service = Service(
            database_url, free_port(), SECRET, log_dir / f"serve-{len(services)}.log", workers=workers,
            env={"DB_POOL_MAX": "4", **base_env, **env},
        )
        services.append(service)
        return service

    try:
        yield make
    finally:
        for service in services:
            service.cleanup()


@asynccontextmanager
async def key_held(database_url: str, load: SignedLoad, n: int) -> AsyncIterator[HeldKey]:
    """Another writer inserts event n, uncommitted: the service's INSERT of it waits on the
    lock until the HeldKey yielded here commits or rolls back (rolled back on exit if open)."""
    body, headers = load.request(n)
    async with hold_key(database_url, tenant=load.tenant, source=SOURCE, key=headers["Idempotency-Key"],
                        body=body) as held:
        yield held


async def resend_settles(load: SignedLoad, url: str) -> None:
    """Resending every unacknowledged event gets a 2xx and leaves one row per key.

    A 503 or a lost answer promises nothing either way: a write cut off by a
    timeout, an outage or a crash may have committed (a batch that won its
    race with its own cancellation, events still queued when their requests
    gave up). A key already stored must be answered 200; the others 201, or
    200 if a late write landed in between.
    """
    stored_before = set(await stored_copies(url, load.tenant))
    resent = await load.resend(load.unacknowledged)
    assert all(a.status in (200, 201) for a in resent), status_counts(resent)
    assert all(a.status == 200 for a in resent if a.key in stored_before), status_counts(resent)
    copies = await stored_copies(url, load.tenant)
    assert set(copies) == load.sent_keys and set(copies.values()) == {1}
