"""PgBouncer's cost: the service's throughput through PgBouncer (transaction
pooling) against a direct connection to PostgreSQL, in one run.

    python -m bench.pgbouncer_cost [--duration 8] [--rounds 2] [--connections 64] [--out FILE]

On one embedded PostgreSQL, and one pgbouncer (a copy of
deploy/pgbouncer/pgbouncer.ini: pool_mode = transaction, its own port on
127.0.0.1, auth_type = trust), it serves codex-ingest (1 worker, batching
on) in three modes and drives each with wrk and bench/wrk_plan.lua through
bench/throughput.py's run_point (which also checks that the rows stored
equal the distinct events sent):

* direct           DATABASE_URL straight to PostgreSQL, asyncpg's statement cache on (100, the default)
* direct_no_cache  the same with DB_STATEMENT_CACHE_SIZE=0: the part of the cost that is the cache
* pgbouncer        DATABASE_URL through PgBouncer, DB_STATEMENT_CACHE_SIZE=0 (PgBouncer < 1.21 needs it)

The modes are interleaved (direct, direct_no_cache, pgbouncer, direct, ...)
for --rounds rounds, because this machine's speed drifts over a run; each
figure is the median of its rounds, every round kept under "runs". It
prints one JSON document: the modes, and "cost": pgbouncer's rps and p99
as ratios of direct's (and of direct_no_cache's, the hop alone).
pgbouncer_cpu_us_per_request is PgBouncer's own CPU per answered request
(measured around the whole point, so slightly over).

The module also holds what runs PgBouncer for this bench and for
tests/ops/test_scale_out.py: ``pgbouncer(url)``, and ``Daemon``, a process
in a session of its own that is always stopped with its whole group.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import orjson

from bench.local import cpu_seconds, free_port

ROOT = Path(__file__).resolve().parents[1]
PGBOUNCER_INI = ROOT / "deploy" / "pgbouncer" / "pgbouncer.ini"


# -- processes -----------------------------------------------------------------


def binary(name: str) -> str | None:
    """The daemon's executable (Debian puts nginx and pgbouncer in /usr/sbin, often not on PATH)."""
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None)


def run_as(user: str | None) -> dict[str, Any]:
    """Popen arguments that drop root to ``user``; nothing when not root."""
    if os.geteuid() != 0 or user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def own_dir(prefix: str, user: str | None) -> Path:
    """A fresh directory under /tmp the daemon's user may write (pytest's are root-only)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0 and user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


@dataclass
class Daemon:
    """A process started in a session of its own; ``stop`` ends its whole group."""

    name: str
    argv: list[str]
    log_path: Path
    user: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, **run_as(self.user),
            )

    def check_running(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, then SIGKILL whatever is left of it."""
        if self.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        # The leader is reaped; its children (nginx's workers) die with the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def wait_for_port(port: int, daemon: Daemon, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        daemon.check_running()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{daemon.name} did not listen on 127.0.0.1:{port}:\n{daemon.log()}")


# -- pgbouncer -----------------------------------------------------------------


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


# -- the bench -----------------------------------------------------------------

MODES = ("direct", "direct_no_cache", "pgbouncer")
_MEDIANS = ("rps", "p50_ms", "p99_ms", "cpu_us_per_request", "pgbouncer_cpu_us_per_request")


def summarize(points: list[dict[str, Any]]) -> dict[str, Any]:
    """One mode's figures: the median of its rounds, every round kept."""
    summary: dict[str, Any] = {
        name: round(statistics.median(p[name] for p in points), 2) for name in _MEDIANS if name in points[0]
    }
    summary["rows_ok"] = all(p["rows_ok"] for p in points)
    summary["other_answers"] = sum(p["other_answers"] for p in points)
    summary["runs"] = [{k: p[k] for k in ("round", "rps", "p99_ms", "cpu_us_per_request", "rows_ok")} for p in points]
    return summary


def main(argv: list[str] | None = None) -> int:
    from bench import throughput

    parser = argparse.ArgumentParser(prog="python -m bench.pgbouncer_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=64, help="HTTP connections (wrk)")
    parser.add_argument("--duration", type=int, default=8, help="seconds per point")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three modes, interleaved (at least 2)")
    parser.add_argument("--duplicates", type=float, default=0.5, help="share of requests that repeat an event")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: this machine drifts, one round of each proves little")
    if binary("pgbouncer") is None:
        parser.error("pgbouncer is not installed (apt-get install pgbouncer)")
    use_wrk = shutil.which("wrk") is not None
    if not use_wrk:
        throughput.log("pgbouncer_cost: wrk is not installed (apt-get install wrk); using the Python load generator")

    workdir = Path(tempfile.mkdtemp(prefix="codex-pgbouncer-cost-"))
    server, url = throughput.start_database(workdir)
    points: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    try:
        with pgbouncer(url) as bouncer:
            assert bouncer.daemon.proc is not None
            for round_ in range(1, args.rounds + 1):
                for mode in MODES:
                    service_url = bouncer.url if mode == "pgbouncer" else url
                    cache = "100" if mode == "direct" else "0"
                    port = free_port()
                    proc = throughput.start_service(service_url, port, 1, True, {"DB_STATEMENT_CACHE_SIZE": cache})
                    try:
                        bouncer_cpu = cpu_seconds([bouncer.daemon.proc.pid])
                        # Checkpoints and row counts go to PostgreSQL directly (url).
                        point = throughput.run_point(url, port, 1, True, args.connections, args.duration,
                                                     args.duplicates, use_wrk, workdir, proc)
                        bouncer_cpu = cpu_seconds([bouncer.daemon.proc.pid]) - bouncer_cpu
                    finally:
                        throughput.stop_service(proc)
                    point.update(mode=mode, round=round_, statement_cache_size=int(cache))
                    if mode == "pgbouncer":
                        answered = max(point["rps"] * args.duration, 1)
                        point["pgbouncer_cpu_us_per_request"] = round(bouncer_cpu / answered * 1e6, 1)
                    throughput.log(f"round {round_}, {mode}: {orjson.dumps(point).decode()}")
                    points[mode].append(point)
    finally:
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)

    modes = {mode: summarize(of_mode) for mode, of_mode in points.items()}
    direct, no_cache, bounced = modes["direct"], modes["direct_no_cache"], modes["pgbouncer"]
    result = {
        "connections": args.connections,
        "workers": 1,
        "batching": True,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "load_generator": "wrk" if use_wrk else "python",
        "modes": modes,
        "cost": {
            # Through PgBouncer (with the statement cache off, as it needs) against the default direct setup.
            "rps_ratio": round(bounced["rps"] / direct["rps"], 3),
            "p99_ratio": round(bounced["p99_ms"] / direct["p99_ms"], 3),
            "rps_ratio_per_round": [
                round(b["rps"] / d["rps"], 3) for b, d in zip(points["pgbouncer"], points["direct"], strict=True)
            ],
            # The two parts: turning asyncpg's statement cache off, and the hop through PgBouncer.
            "statement_cache_off_rps_ratio": round(no_cache["rps"] / direct["rps"], 3),
            "hop_rps_ratio": round(bounced["rps"] / no_cache["rps"], 3),
            "hop_p99_ratio": round(bounced["p99_ms"] / no_cache["p99_ms"], 3),
        },
    }
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if not all(m["rows_ok"] and not m["other_answers"] for m in modes.values()):
        throughput.log("FAIL: rows stored differ from distinct events sent, or unexpected answers")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
