"""The service under test, as the benches and tests run it.

* ``start_service`` / ``stop_service``: ``codex-ingest serve --no-migrate`` as
  a plain child, for the throughput measurements (its ``worker_pids`` are what
  CPU and RSS are measured on).
* ``Service``: the same in a process group (session) of its own, logging to a
  file, ready once every worker listens; ``kill9`` takes the supervisor and
  every worker at once (the fault harness, the read-side bench, the tests).
* ``wait_answering``: until a server just started answers over HTTP.
* ``cli_command``: the real ``codex-ingest`` command, for its other subcommands.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bench.local import children, free_port, stat_fields, status_kb

SECRET = "bench-secret"  # WEBHOOK_SECRET of start_service's service: plans for it are signed with it


def wait_answering(url: str, proc: subprocess.Popen, what: str, timeout: float, every: float) -> None:
    """Return once a GET of ``url`` gets a 2xx; RuntimeError when ``proc`` exits or ``timeout`` s pass first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited at start") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(every)


def cli_command() -> list[str]:
    """The real ``codex-ingest`` command of this interpreter's environment."""
    script = Path(sys.executable).parent / "codex-ingest"
    return [str(script)] if script.exists() else [sys.executable, "-m", "codex_ingest"]


# -- a plain child, for throughput ------------------------------------------------


def start_service(url: str, port: int, workers: int, batching: bool, extra_env: dict[str, str]) -> subprocess.Popen:
    env = {
        **os.environ,
        **extra_env,
        "DATABASE_URL": url,
        "WEBHOOK_SECRET": SECRET,
        "PORT": str(port),
        "WORKERS": str(workers),
        "BATCHING": "on" if batching else "off",
        "LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen([sys.executable, "-m", "codex_ingest", "serve", "--no-migrate"], env=env)
    wait_answering(f"http://127.0.0.1:{port}/healthz", proc, "the service", timeout=60, every=0.2)
    return proc


def stop_service(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def worker_pids(proc: subprocess.Popen, workers: int) -> list[int]:
    """The processes that serve requests: the service itself, or its workers."""
    if workers == 1:
        return [proc.pid]
    # Only spawn_main children are workers; the supervisor may have others (multiprocessing's resource tracker).
    return [p for p in children(proc.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]


def worker_rss_mb(proc: subprocess.Popen, workers: int) -> float:
    """Largest resident set among the processes that serve requests."""
    sizes = [kb / 1024 for pid in worker_pids(proc, workers) if (kb := status_kb(pid, "VmRSS")) is not None]
    return round(max(sizes), 1)


# -- in a process group of its own ------------------------------------------------


@dataclass
class Service:
    """``codex-ingest serve`` in a process group (session) of its own, logging to a file."""

    database_url: str
    port: int
    secret: str
    log_path: Path
    workers: int = 2
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        clean = {k: v for k, v in os.environ.items() if k not in _SERVICE_ENV}
        env = {
            **clean,
            "DATABASE_URL": self.database_url,
            "WEBHOOK_SECRET": self.secret,
            "PORT": str(self.port),
            "WORKERS": str(self.workers),
            # kill -9 leaves the workers' metrics directory behind: keep it beside the log.
            "TMPDIR": str(self.log_path.parent),
            **self.env,
        }
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "codex_ingest", "serve", "--no-migrate"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill9 reaches every worker
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited at start with {self.proc.returncode}; see {self.log_path}")
            # Each worker listens (its own SO_REUSEPORT socket) only once its pool
            # is open; until all do, /readyz may come from the first one alone.
            if listeners(self.port) >= self.workers:
                try:
                    with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=1) as resp:
                        if resp.status == 200:
                            return
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"serve did not become ready; see {self.log_path}")

    def group(self) -> list[int]:
        """Live (not zombie) pids in the service's process group."""
        assert self.proc is not None
        return _live_in_group(self.proc.pid)

    def kill9(self, timeout: float = 10.0) -> int:
        """SIGKILL the supervisor and every worker at once; return how many processes there were."""
        assert self.proc is not None
        pids = self.group()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout)
        deadline = time.monotonic() + timeout
        while self.group() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.group():
            raise RuntimeError(f"processes survived SIGKILL: {self.group()}")
        self._close_log()
        return len(pids)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM to the service's main process only (it stops its workers); return its exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._close_log()
        return code

    def cleanup(self) -> None:
        """Leave nothing running (for finally blocks)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


_SERVICE_ENV = {
    "DATABASE_URL", "WEBHOOK_SECRET", "PORT", "HOST", "WORKERS", "LOG_LEVEL", "ACCESS_LOG", "BATCHING",
    "CODEX_DATA_DIR", "DB_POOL_MIN", "DB_POOL_MAX", "DB_CONNECT_TIMEOUT", "DB_COMMAND_TIMEOUT",
    "DB_WRITE_TIMEOUT", "SHUTDOWN_GRACE_SECONDS", "RETRY_AFTER_SECONDS", "CODEX_SOURCES",
}


def _live_in_group(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, _ppid, pgrp = stat_fields(int(entry.name))[:3]
        except OSError:
            continue
        if int(pgrp) == pgid and state != "Z":
            pids.append(int(entry.name))
    return pids


def listeners(port: int) -> int:
    """Sockets listening on a TCP port, from /proc/net/tcp and tcp6."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                count += 1
    return count


# -- a checkout's own service, for benches that compare two trees -------------------


def tree_env(tree: Path, extra: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment that makes Python import ``tree``'s own codex_ingest (with cwd ``tree``)."""
    return {**(os.environ if base is None else base), "PYTHONPATH": str(tree.resolve()), **extra}


def tree_package(tree: Path, env: Mapping[str, str] | None = None) -> str:
    """Where ``import codex_ingest`` resolves in ``tree``; exits when it is not inside it, since
    a comparison of two trees that both run the same code measures nothing."""
    found = subprocess.run([sys.executable, "-c", "import codex_ingest; print(codex_ingest.__file__)"],
                           cwd=tree, env=dict(env) if env is not None else tree_env(tree, {}),
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"codex_ingest from {tree} resolves to {found}")
    return found


@contextlib.contextmanager
def serving_tree(tree: Path, env: Mapping[str, str], workers: int, output: IO[bytes] | int = subprocess.DEVNULL,
                 ready: Callable[[int], bool] | None = None,
                 stop_seconds: float = 30) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``codex-ingest serve --no-migrate`` from ``tree`` (``env`` from tree_env) on a free port,
    in a process group of its own, until the block ends: (process, port). Ready once ``workers``
    sockets listen and ``ready(port)`` says so; SIGTERM at the end, SIGKILL to the group after
    ``stop_seconds``."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "codex_ingest", "serve", "--no-migrate"], cwd=tree,
        env={**env, "PORT": str(port), "WORKERS": str(workers)},
        stdout=output, stderr=None if output == subprocess.DEVNULL else subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while listeners(port) < workers or (ready is not None and not ready(port)):
            if proc.poll() is not None or time.monotonic() > deadline:
                name = getattr(output, "name", None)
                raise RuntimeError(f"serve from {tree} did not start" + (f"; see {name}" if name else ""))
            time.sleep(0.1)
        yield proc, port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(stop_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

