"""The service's pool: what every connection is pinned to, and what
releasing a connection still guarantees now that it skips the reset query."""

from __future__ import annotations

from dataclasses import replace

import asyncpg

from codex_ingest.settings import Settings
from codex_ingest.storage.pool import StatelessConnection, create_pool


async def test_connections_commit_synchronously(settings: Settings) -> None:
    pool = await create_pool(replace(settings, db_pool_min=1, db_pool_max=1))
    try:
        async with pool.acquire() as conn:
            assert isinstance(conn, StatelessConnection)
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await pool.close()


async def test_connections_commit_synchronously_on_a_server_whose_default_is_off(settings: Settings, new_database) -> None:
    # "A 2xx means committed" must not depend on the server's configuration:
    # the pool pins synchronous_commit on even where the database says off.
    url = new_database()
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f"ALTER DATABASE {await admin.fetchval('SELECT quote_ident(current_database())')} "
                            "SET synchronous_commit = off")
    finally:
        await admin.close()
    plain = await asyncpg.connect(url)
    try:
        assert await plain.fetchval("SHOW synchronous_commit") == "off"  # the trap is set
    finally:
        await plain.close()
    pool = await create_pool(replace(settings, database_url=url, db_pool_min=1, db_pool_max=1))
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await pool.close()


async def test_release_rolls_back_an_open_transaction(settings: Settings, db) -> None:
    # The reset query is skipped, but asyncpg must still end an abandoned
    # transaction on release: nothing it wrote may survive, and the next
    # borrower must not find itself inside it.
    pool = await create_pool(replace(settings, db_pool_min=1, db_pool_max=1))
    try:
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute(
                "INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body) "
                "VALUES ('t', 's', 'k', sha256('x'), 'x')"
            )
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
        assert await db.fetchval("SELECT count(*) FROM events") == 0
    finally:
        await pool.close()
