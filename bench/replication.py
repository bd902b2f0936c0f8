"""A primary and a streaming standby on this machine, to rehearse a failover.

Why: "a 2xx means committed" is easy to keep while there is one database
server — the commit is on its disk before the answer (tests/faults/test_crash.py).
Across a failover it holds only if every acknowledged commit had reached the
standby that gets promoted, which takes synchronous replication; and the
service must find the new primary by itself, from a multi-host URL with
``target_session_attrs=read-write``. bench/chaos.py ``--fault failover`` and
tests/faults/test_failover.py show both on a real pair of servers, which this
module makes from the embedded PostgreSQL binaries (initdb, pg_basebackup,
pg_ctl): it kills the primary as a dying machine would (SIGKILL to the
postmaster and all its children at once), promotes the standby, and removes
everything afterwards, also when something fails.

    with ReplicaPair.start(synchronous=True) as pair:
        pair.multi_host_url()       # what the service is given
        pair.kill_primary()
        pair.promote()
        pair.standby.url()          # the new primary

``make_primary_read_only`` rehearses a planned switchover instead (the
primary stays up but takes no more writes), and ``freeze_primary`` a machine
that hangs or drops off the network (it stops answering without refusing).

Only 127.0.0.1 and a unix socket directory of its own are used. As root,
every PostgreSQL program runs as the system user embedded_postgres (PostgreSQL
refuses to run as root), like tests/pg.py's embedded server.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import psycopg

from bench.daemon import give_to, run_as
from bench.database import bin_dir
from bench.local import free_port, stat_fields

DATABASE = "codex"
STANDBY_NAME = "codex_standby"  # the standby's application_name, which synchronous_standby_names names
SYSTEM_USER = "embedded_postgres"

# Settings of both servers (pg_basebackup copies them to the standby).
_COMMON_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "wal_level": "replica",
    "max_wal_senders": "4",
    "hot_standby": "on",
    "wal_keep_size": "'256MB'",
    "synchronous_commit": "on",
}


@dataclass
class Node:
    """One PostgreSQL server: its data directory, port and log."""

    name: str
    data_dir: Path
    port: int
    log: Path

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class ReplicaPair:
    """A primary streaming to one hot standby, synchronously or not.

    ``synchronous``: the primary's synchronous_standby_names names the
    standby, so a commit returns only once the standby has flushed it
    (synchronous_commit=on). Otherwise the standby trails by whatever WAL
    was not yet sent when the primary dies.
    """

    def __init__(self, synchronous: bool, parent: Path | None = None, database: str = DATABASE) -> None:
        self.synchronous = synchronous
        self.database = database
        # A short path of its own: unix socket paths are limited to ~100 bytes.
        self.base = Path(tempfile.mkdtemp(prefix="codex-repl-", dir=parent))
        self.socket_dir = self.base / "sock"
        self.primary = Node("primary", self.base / "primary", free_port(), self.base / "primary.log")
        self.standby = Node("standby", self.base / "standby", free_port(), self.base / "standby.log")
        self._user = SYSTEM_USER if os.geteuid() == 0 else None

    # -- lifecycle ------------------------------------------------------------

    @classmethod
    def start(cls, synchronous: bool = True, parent: Path | None = None, database: str = DATABASE) -> Self:
        """Both servers running, the standby streaming (and ``sync`` when synchronous)."""
        pair = cls(synchronous, parent, database)
        try:
            pair._start()
        except BaseException:
            pair.close()
            raise
        return pair

    def _start(self) -> None:
        self._own(self.base, 0o755)
        self.socket_dir.mkdir()
        self._own(self.socket_dir, 0o755)
        for node in (self.primary, self.standby):
            node.data_dir.mkdir(mode=0o700)
            self._own(node.data_dir, 0o700)

        self._run("initdb", "-D", self.primary.data_dir, "--auth=trust", "-U", "postgres",
                  "--encoding=UTF8", "--locale=C", "--no-sync")
        settings = {**_COMMON_SETTINGS, "unix_socket_directories": f"'{self.socket_dir}'"}
        with (self.primary.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# bench/replication.py\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        self._pg_ctl_start(self.primary)
        with psycopg.connect(self.primary.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')

        # The standby: a base backup of the primary, told where to stream from
        # and under which name (the one synchronous_standby_names refers to).
        self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres",
                  "-D", self.standby.data_dir, "-X", "stream", "-c", "fast", "--no-sync", timeout=120)
        conninfo = f"host=127.0.0.1 port={self.primary.port} user=postgres application_name={STANDBY_NAME}"
        with (self.standby.data_dir / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"primary_conninfo = '{conninfo}'\n")
        (self.standby.data_dir / "standby.signal").touch()
        self._own(self.standby.data_dir / "standby.signal", 0o600)
        self._pg_ctl_start(self.standby)
        self.wait_streaming("async")

        if self.synchronous:
            # Set on the primary only, after the standby connected: the standby,
            # once promoted, must not wait for a standby of its own.
            with psycopg.connect(self.primary.url("postgres"), autocommit=True) as conn:
                conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
                conn.execute("SELECT pg_reload_conf()")
            self.wait_streaming("sync")

    def wait_streaming(self, sync_state: str, timeout: float = 60.0) -> None:
        """Wait until the primary's pg_stat_replication shows the standby streaming in that sync_state."""
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = self.replication_state()
            if seen == ("streaming", sync_state):
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"standby not streaming ({sync_state}) after {timeout:.0f} s: {seen}\n"
            f"--- primary log\n{self.primary.log_tail()}\n--- standby log\n{self.standby.log_tail()}"
        )

    def replication_state(self) -> tuple[str, str] | None:
        """(state, sync_state) of the standby as the primary sees it; None when it is not connected."""
        with psycopg.connect(self.primary.url("postgres"), autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = %s", (STANDBY_NAME,)
            ).fetchone()
        return (row[0], row[1]) if row else None

    def multi_host_url(self, database: str | None = None) -> str:
        """Both servers in one URL; the client connects to whichever one is writable."""
        return (
            f"postgresql://postgres@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
            f"/{database or self.database}?target_session_attrs=read-write"
        )

    # -- the failover ------------------------------------------------------------

    def kill_primary(self, timeout: float = 10.0) -> int:
        """SIGKILL the primary's postmaster and every process it started, all
        at once, as if its machine died; return how many processes there were.

        Each backend is a process group of its own (PostgreSQL calls setsid), so
        a killpg would miss them: the whole tree is frozen first (no more WAL
        sent, no more forks), then killed.
        """
        tree = self.freeze_primary()
        _kill(tree, timeout)
        return len(tree)

    def freeze_primary(self) -> list[int]:
        """SIGSTOP the primary's postmaster and every process it started: a machine that hangs, or that
        the network no longer reaches. Its kernel still accepts TCP connections, and nothing answers them."""
        pid = self.primary.postmaster_pid()
        if pid is None:
            raise RuntimeError("the primary is not running")
        os.kill(pid, signal.SIGSTOP)  # the postmaster first: it forks no more
        for p in _descendants(pid):
            _signal(p, signal.SIGSTOP)
        tree = [pid, *_descendants(pid)]  # a child forked before the postmaster stopped
        for p in tree:
            _signal(p, signal.SIGSTOP)
        return tree

    def make_primary_read_only(self) -> None:
        """Demote the primary as a switchover begins: it stays up and streaming, and takes no more writes
        (default_transaction_read_only, reloaded: existing sessions get SQLSTATE 25006)."""
        with psycopg.connect(self.primary.url("postgres"), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            conn.execute("SELECT pg_reload_conf()")

    def promote(self, timeout: float = 60.0) -> None:
        """``pg_ctl promote``: the standby ends recovery and takes writes; returns once it does."""
        self._run("pg_ctl", "-D", self.standby.data_dir, "-w", "-t", str(int(timeout)), "promote",
                  timeout=timeout + 10)

    # -- cleanup ---------------------------------------------------------------

    def close(self) -> None:
        """Kill whatever still runs (the data goes too, so there is nothing to shut down cleanly;
        a frozen server would not even hear pg_ctl stop) and remove the directory."""
        for node in (self.primary, self.standby):
            pid = node.postmaster_pid()
            if pid is not None:
                _kill([pid, *_descendants(pid)])
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers ---------------------------------------------------------------

    def _pg_ctl_start(self, node: Node) -> None:
        try:
            self._run("pg_ctl", "-D", node.data_dir, "-w", "-t", "60", "-l", node.log,
                      "-o", f"-p {node.port}", "start", timeout=70)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n--- {node.name} log\n{node.log_tail()}") from None

    def _run(self, program: str, *args: object, timeout: float = 60.0) -> None:
        """Run a PostgreSQL program (as SYSTEM_USER when root); raise with its output if it fails."""
        command = [str(bin_dir() / program), *map(str, args)]
        # Files, not pipes: pg_ctl start leaves a server that could hold a pipe open.
        with tempfile.TemporaryFile() as out:
            try:
                subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                               check=True, timeout=timeout, cwd=self.base, **run_as(self._user))
            except subprocess.SubprocessError as exc:
                out.seek(0)
                raise RuntimeError(f"{program} failed ({exc}):\n{out.read().decode(errors='replace')}") from None

    def _own(self, path: Path, mode: int) -> None:
        path.chmod(mode)
        give_to(path, self._user)


def _kill(pids: list[int], timeout: float = 10.0) -> None:
    """SIGKILL every process and wait until all are gone (zombies count as gone)."""
    for p in pids:
        _signal(p, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes survived SIGKILL: {[p for p in pids if _alive(p)]}")
        time.sleep(0.01)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, from /proc; None when it is gone."""
    try:
        fields = stat_fields(pid)
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[1], []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
