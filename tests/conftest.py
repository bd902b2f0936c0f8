from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from codex_ingest.intake.sources import parse_sources
from codex_ingest.settings import Settings
from codex_ingest.storage import migrations
from codex_ingest.web.app import create_app
from tests import live as live_service
from tests import pg
from tests.helpers import READ_TOKEN, SECRET

# The needs_program marker: skipped without the program, failed in CI.
pytest_plugins = ["tests.programs"]


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Admin URL of the session's PostgreSQL server."""
    external = pg.external_admin_url()
    if external is not None:
        yield external
        return
    server = pg.start_embedded_server(tmp_path_factory.mktemp("pg"))
    try:
        yield server.admin_url
    finally:
        server.close()


@pytest.fixture
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pg.EmbeddedServer]:
    """A PostgreSQL server of the test's own, to stop, fill or reconfigure without disturbing any other test."""
    server = pg.start_embedded_server(tmp_path_factory.mktemp("own-pg"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def new_database(pg_admin_url: str) -> Iterator[Callable[[], str]]:
    """Factory: a fresh, empty database on the session's server; dropped after the test."""
    created: list[str] = []

    def make() -> str:
        name, url = pg.create_database(pg_admin_url)
        created.append(name)
        return url

    yield make
    for name in created:
        pg.drop_database(pg_admin_url, name)


@pytest.fixture(scope="session")
def database_url(pg_admin_url: str) -> Iterator[str]:
    """A migrated database shared by the session's HTTP tests."""
    name, url = pg.create_database(pg_admin_url)
    migrations.apply_all(url)
    try:
        yield url
    finally:
        pg.drop_database(pg_admin_url, name)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the shared database, emptied of events first."""
    conn = await asyncpg.connect(database_url)
    await conn.execute("TRUNCATE events, purge_horizons RESTART IDENTITY")
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(params=[True, False], ids=["batched", "direct"])
def settings(request: pytest.FixtureRequest, database_url: str) -> Settings:
    """Every HTTP test runs twice: with micro-batching (the default) and with one INSERT per request."""
    return Settings(
        webhook_secret=SECRET,
        database_url=database_url,
        db_pool_min=1,
        db_pool_max=8,
        max_body_bytes=64 * 1024,
        batching=request.param,
    )


@pytest.fixture
async def client(
    aiohttp_client: Callable[..., AsyncIterator[TestClient]],
    settings: Settings,
    db: asyncpg.Connection,
) -> TestClient:
    return await aiohttp_client(create_app(settings))  # type: ignore[misc, no-any-return]


@pytest.fixture
def make_client(
    aiohttp_client: Callable[..., AsyncIterator[TestClient]], settings: Settings, db: asyncpg.Connection
) -> Callable[..., object]:
    """Factory for a client whose settings differ from the default ones."""

    async def make(**changes: object) -> TestClient:
        return await aiohttp_client(create_app(replace(settings, **changes)))  # type: ignore[misc, no-any-return]

    return make


@pytest.fixture
def provider_client(
    aiohttp_client: Callable[..., AsyncIterator[TestClient]], settings: Settings, db: asyncpg.Connection
) -> Callable[..., object]:
    """Factory for a client serving the sources declared in ``toml`` (secrets
    resolved from ``env``), timestamps checked against ``clock``."""

    async def make(toml: str, env: dict[str, str] | None = None, clock: Callable[[], float] | None = None,
                   **changes: object) -> TestClient:
        table = parse_sources(toml, env or {})
        app = create_app(replace(settings, source_table=table, **changes), clock=clock or time.time)
        return await aiohttp_client(app)  # type: ignore[misc, no-any-return]

    return make


@pytest.fixture(scope="session")
def live(database_url: str) -> Iterator[live_service.Live]:
    """`codex-ingest serve` in a child process on the shared database, for synchronous clients."""
    with live_service.serve(database_url, HEADER_READ_TIMEOUT="5", BODY_READ_TIMEOUT="5",
                            CODEX_API_TOKENS=f"{READ_TOKEN}=*") as service:
        yield service
