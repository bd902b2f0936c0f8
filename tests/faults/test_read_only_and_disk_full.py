"""Two states of the server that pass, made for real: the database turned
read-only (what a demoted primary or a standby answers: SQLSTATE 25006), and
its disk full (53100). Each is 503 with Retry-After and nothing stored, and
ingest comes back by itself once the state is gone, with no restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from codex_ingest.settings import Settings
from codex_ingest.storage import migrations
from codex_ingest.web.app import create_app
from tests import pg, programs
from tests.helpers import SECRET, headers, until

# The write path: batched and direct writes must each keep these promises.
pytestmark = pytest.mark.both_write_paths

URL = "/pos/toast/ingest"
RECOVERY_BOUND = 5.0
POSTGRES_SYSTEM_USER = "embedded_postgres"  # who the embedded server runs as when we are root


def service_settings(url: str, batching: bool) -> Settings:
    return Settings(
        webhook_secret=SECRET, database_url=url, db_pool_min=1, db_pool_max=2,
        db_connect_timeout=1.0, db_command_timeout=2.0, retry_after_seconds=7, batching=batching,
    )


async def service_backends(conn: asyncpg.Connection) -> set[int]:
    rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = 'codex-ingest'")
    return {r["pid"] for r in rows}


async def first_201_within(client, body: bytes, bound: float) -> float:
    """Post ``body`` until it is answered 201 (each other answer must be 503); the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        resp = await client.post(URL, data=body, headers=headers(body))
        if resp.status == 201:
            return loop.time() - started
        assert resp.status == 503, await resp.text()
        assert loop.time() - started < bound, "ingest did not come back in time"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "direct"])
async def test_a_read_only_database_is_503_and_writable_again_within_5_s_without_restart(
    aiohttp_client, own_server, batching: bool
) -> None:
    url = own_server.url("postgres")
    migrations.apply_all(url)
    client = await aiohttp_client(create_app(service_settings(url, batching)))
    admin = await asyncpg.connect(url)
    try:
        first = b'{"guid":"before"}'
        assert (await client.post(URL, data=first, headers=headers(first))).status == 201
        writable_backends = await service_backends(admin)
        assert writable_backends

        await admin.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        await admin.execute("SELECT pg_reload_conf()")

        async def reloaded() -> bool:
            return await admin.fetchval("SHOW default_transaction_read_only") == "on"

        # Sessions pick the reload up at their next command once the postmaster has signalled them:
        # it has, when this session sees it (it signals them all at once).
        await until(reloaded, "the reload to reach the sessions")

        during = b'{"guid":"during"}'
        for _ in range(3):
            resp = await client.post(URL, data=during, headers=headers(during))
            assert resp.status == 503, await resp.text()
            assert resp.headers["Retry-After"] == "7"
            assert (await resp.json())["error"] == "database_unavailable"
        # The connections that said "read-only" were closed, not kept for the next request.
        assert not (writable_backends & await service_backends(admin))

        await admin.execute("ALTER SYSTEM RESET default_transaction_read_only")
        await admin.execute("SELECT pg_reload_conf()")
        assert await first_201_within(client, during, RECOVERY_BOUND) < RECOVERY_BOUND
        bodies = [bytes(r["body"]) for r in await admin.fetch("SELECT body FROM events ORDER BY id")]
        assert bodies == [first, during]
    finally:
        await admin.close()


# -- the disk fills ---------------------------------------------------------------------------


def _as_root(*command: str) -> list[str]:
    """Run as root: directly when we are, else through passwordless sudo (a
    GitHub runner has it); neither is a plain failure of the command."""
    if os.geteuid() == 0 or shutil.which("sudo") is None:
        return list(command)
    return ["sudo", "-n", *command]


@contextlib.contextmanager
def small_tmpfs(size: str) -> Iterator[Path]:
    """A tmpfs of ``size``, owned by the server's system user.

    Mounted under a directory of its own in the system's temporary
    directory: the server's user must be able to reach it, and pytest's
    temporary directories are private to root. Mounting needs root (or
    sudo); where neither is allowed the test is skipped, saying why, and in
    CI it fails, since CI must run every test.
    """
    parent = Path(tempfile.mkdtemp(prefix="codex-tmpfs-"))
    parent.chmod(0o755)
    path = parent / "small"
    path.mkdir()
    done = subprocess.run(_as_root("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)),
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(parent, ignore_errors=True)
        reason = (f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): run as root or with "
                  "passwordless sudo; 53100 is still covered by injection in tests/storage/test_db_errors.py")
        if programs.in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    try:
        owner = POSTGRES_SYSTEM_USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        subprocess.run(_as_root("chown", f"{owner}:", str(path)), check=True)
        yield path
    finally:
        subprocess.run(_as_root("umount", "-l", str(path)), check=False)
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
async def full_disk_database(pg_admin_url: str) -> AsyncIterator[tuple[str, Path]]:
    """A migrated database whose events table and indexes live on a 2 MB tmpfs (a tablespace);
    yields its URL and the tmpfs directory, where the test fills and frees the space."""
    if pg.external_admin_url() is not None:
        pytest.skip("the tablespace must be on the database server's own disk; DATABASE_URL's server may be elsewhere")
    with small_tmpfs("2m") as mount:
        space = f"codex_small_{uuid.uuid4().hex[:8]}"
        name, url = pg.create_database(pg_admin_url)
        migrations.apply_all(url)
        admin = await asyncpg.connect(pg_admin_url)
        try:
            await admin.execute(f"CREATE TABLESPACE {space} LOCATION '{mount}'")
            conn = await asyncpg.connect(url)
            try:
                await conn.execute(f"""
                    ALTER TABLE events SET TABLESPACE {space};
                    ALTER INDEX events_pkey SET TABLESPACE {space};
                    ALTER INDEX events_dedup_key SET TABLESPACE {space};
                """)
            finally:
                await conn.close()
            yield url, mount
        finally:
            # The tablespace goes only once no database uses it (DROP ... WITH (FORCE)).
            pg.drop_database(pg_admin_url, name)
            await admin.execute(f"DROP TABLESPACE IF EXISTS {space}")
            await admin.close()


def fill(mount: Path) -> Path:
    """Take every free byte of the tmpfs with a file of the server's user; return it."""
    filler = mount / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False)
    return filler


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "direct"])
async def test_a_full_disk_is_503_and_ingest_recovers_when_space_returns(
    aiohttp_client, full_disk_database, batching: bool
) -> None:
    url, mount = full_disk_database
    client = await aiohttp_client(create_app(service_settings(url, batching)))
    filler = fill(mount)
    assert os.statvfs(mount).f_bavail == 0

    # New pages are needed for new rows (and their index entries): the disk has none to give.
    bodies = [b'{"guid":"full-%d","pad":"%s"}' % (i, b"x" * 3000) for i in range(4)]
    statuses = []
    for body in bodies:
        resp = await client.post(URL, data=body, headers=headers(body))
        statuses.append(resp.status)
        if resp.status == 503:
            assert resp.headers["Retry-After"] == "7"
    assert 503 in statuses and set(statuses) <= {201, 503}, statuses
    metrics = await (await client.get("/metrics")).text()
    assert 'codex_ingest_db_errors_total{class="53"}' in metrics

    filler.unlink()  # space returns
    conn = await asyncpg.connect(url)
    try:
        for body, status in zip(bodies, statuses, strict=True):
            if status == 503:
                assert await first_201_within(client, body, RECOVERY_BOUND) < RECOVERY_BOUND
        copies = await conn.fetch("SELECT body, count(*) AS n FROM events GROUP BY body")
        assert sorted(bytes(r["body"]) for r in copies) == sorted(bodies)
        assert {r["n"] for r in copies} == {1}
    finally:
        await conn.close()
