"""PgBouncer on this machine, set up as deploy/pgbouncer/pgbouncer.ini sets it
(pool_mode = transaction), on a free 127.0.0.1 port with trust auth, in front
of a given database: ``pgbouncer(url)`` (bench.pgbouncer_cost measures what it
costs; tests/ops/test_scale_out.py runs the service through it)."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from bench.daemon import Daemon, binary, own_dir, wait_for_port
from bench.local import free_port

ROOT = Path(__file__).resolve().parents[1]
PGBOUNCER_INI = ROOT / "deploy" / "pgbouncer" / "pgbouncer.ini"


@dataclass(frozen=True)
class Server:
    """Where a PostgreSQL URL points: host (a name or a socket directory), port, user, password, database."""

    host: str
    port: int
    user: str
    password: str
    database: str

    @classmethod
    def of(cls, url: str) -> Server:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        host = query.get("host", [parts.hostname or "/tmp"])[0]
        port = int(query.get("port", [str(parts.port or 5432)])[0])
        return cls(host, port, unquote(parts.username or "postgres"), unquote(parts.password or ""),
                   unquote(parts.path.lstrip("/")) or "postgres")

    @property
    def socket_owner(self) -> str | None:
        """The owner of a socket directory (the user that may enter it); None for a TCP host or root."""
        if not self.host.startswith("/"):
            return None
        owner = pwd.getpwuid(os.stat(self.host).st_uid).pw_name
        return None if owner == "root" else owner


def _database_entry(example: str, server: Server) -> str:
    """The example's [databases] entry (its options kept) pointed at ``server``."""
    match = re.search(r"^\[databases\]\s*$(?P<body>.*?)^\[", example, re.MULTILINE | re.DOTALL)
    assert match is not None, "no [databases] section in the example"
    entries = [line for line in match["body"].splitlines() if line.strip() and not line.lstrip().startswith((";", "#"))]
    assert len(entries) == 1, entries
    options = entries[0].split("=", 1)[1]
    options = re.sub(r"\b(host|port|dbname|user|password)=('[^']*'|\S+)\s*", "", options).strip()
    own = f"host={server.host} port={server.port} dbname={server.database} user={server.user}"
    if server.password:
        own += f" password='{server.password}'"
    return f"{server.database} = {own} {options}"


def render_pgbouncer_ini(example: str, server: Server, listen_port: int, directory: Path) -> str:
    """The example with its database entry on ``server`` and its own port, files and trust auth."""
    overrides = {
        "listen_addr": "127.0.0.1",
        "listen_port": str(listen_port),
        "unix_socket_dir": "",
        "auth_type": "trust",
        "auth_file": str(directory / "userlist.txt"),
        "logfile": str(directory / "pgbouncer.log"),
        "pidfile": str(directory / "pgbouncer.pid"),
    }
    lines: list[str] = []
    section = ""
    for line in example.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped
            lines.append(line)
            if section == "[databases]":
                lines.append(_database_entry(example, server))
            continue
        if not stripped or stripped.startswith((";", "#")):
            lines.append(line)
            continue
        key = stripped.split("=", 1)[0].strip()
        if section == "[databases]":
            continue  # the example's entry: replaced above
        lines.append(f"{key} = {overrides.pop(key)}" if key in overrides else line)
    lines += [f"{key} = {value}" for key, value in overrides.items()]
    return "\n".join(lines) + "\n"


@dataclass
class PgBouncer:
    port: int
    server: Server
    directory: Path
    daemon: Daemon

    @property
    def url(self) -> str:
        """The same database, through PgBouncer."""
        password = f":{quote(self.server.password, safe='')}" if self.server.password else ""
        return f"postgresql://{quote(self.server.user, safe='')}{password}@127.0.0.1:{self.port}/{self.server.database}"

    def log(self) -> str:
        try:
            return (self.directory / "pgbouncer.log").read_text(errors="replace") + self.daemon.log()
        except OSError:
            return self.daemon.log()


@contextlib.contextmanager
def pgbouncer(database_url: str) -> Iterator[PgBouncer]:
    """pgbouncer on a free 127.0.0.1 port with deploy/pgbouncer/pgbouncer.ini, for ``database_url``'s database."""
    executable = binary("pgbouncer")
    if executable is None:
        raise RuntimeError("pgbouncer is not installed (apt-get install pgbouncer)")
    server = Server.of(database_url)
    user = (server.socket_owner or "nobody") if os.geteuid() == 0 else None
    port = free_port()
    directory = own_dir("codex-pgbouncer-", user)
    ini = directory / "pgbouncer.ini"
    ini.write_text(render_pgbouncer_ini(PGBOUNCER_INI.read_text(), server, port, directory))
    (directory / "userlist.txt").write_text(f'"{server.user}" ""\n')
    for path in directory.iterdir():
        path.chmod(0o644)
    daemon = Daemon("pgbouncer", [executable, str(ini)], directory / "stderr.log", user)
    try:
        daemon.start()
        wait_for_port(port, daemon)
        yield PgBouncer(port, server, directory, daemon)
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)
