from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import suppress
from dataclasses import replace

import asyncpg
import psutil
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


@pytest.fixture(scope="session", autouse=True)
def nothing_outlives_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the last test: no PostgreSQL on a data directory under this session's temp root,
    and no child process of pytest, may still run. Any that does is named, killed, and fails
    the session (an error at teardown of the last test).

    Autouse and session-scoped, so set up before and torn down after every other session
    fixture: the shared server (pg_admin_url) is closed by then, and must be."""
    yield
    postmasters = pg.postmasters_under(tmp_path_factory.getbasetemp())
    children = [p for p in _running_children() if p.pid not in {m.pid for m in postmasters}]
    if not postmasters and not children:
        return
    leaked = [_describe(p) for p in [*postmasters, *children]]
    for postmaster in postmasters:
        pg.kill_postmaster(postmaster)
    for child in children:
        with suppress(psutil.NoSuchProcess):
            child.terminate()
    for child in psutil.wait_procs(children, timeout=5)[1]:
        with suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(children, timeout=5)
    pytest.fail("processes outlived the tests (now killed):\n  " + "\n  ".join(leaked), pytrace=False)


def _running_children() -> list[psutil.Process]:
    """pytest's descendants still running; a zombie has exited, it only waits to be reaped."""
    running = []
    for proc in psutil.Process().children(recursive=True):
        with suppress(psutil.NoSuchProcess):
            if proc.status() != psutil.STATUS_ZOMBIE:
                running.append(proc)
    return running


def _describe(proc: psutil.Process) -> str:
    try:
        command = " ".join(proc.cmdline())
    except psutil.Error:
        command = "?"
    data_dir = pg.served_data_dir(proc)
    gone = " (data directory deleted)" if data_dir is not None and not data_dir.exists() else ""
    return f"pid {proc.pid}: {command[:300]}{gone}"


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
    await conn.execute("TRUNCATE events, purge_horizons, deliveries, delivery_attempts, destination_state,"
                       " destination_sends, console_sessions, console_audit, ingest_minutes, recent_rejections RESTART IDENTITY")
    try:
        yield conn
    finally:
        await conn.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # The write path is where micro-batching changes behaviour (one INSERT for
    # many requests, a shared commit, a shared failure): tests that check it
    # run twice, batched and direct. Everything else (validation, signatures,
    # reads, headers) runs once, with the default.
    if "settings" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_write_paths"):
        metafunc.parametrize("settings", [True, False], ids=["batched", "direct"], indirect=True)


@pytest.fixture
def settings(request: pytest.FixtureRequest, database_url: str) -> Settings:
    """The HTTP tests' settings: micro-batching on (the default), or off for the
    second run of a test marked ``both_write_paths``."""
    return Settings(
        webhook_secret=SECRET,
        database_url=database_url,
        db_pool_min=1,
        db_pool_max=8,
        max_body_bytes=64 * 1024,
        batching=getattr(request, "param", True),
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
