"""Daemons the benches and tests run beside the service (PgBouncer, nginx):
found where Debian puts them, started in a session of their own, as an
unprivileged user when this runs as root, and always stopped with their whole
process group."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def binary(name: str) -> str | None:
    """The daemon's executable (Debian puts nginx and pgbouncer in /usr/sbin, often not on PATH)."""
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None)


def run_as(user: str | None) -> dict[str, Any]:
    """Popen arguments that drop root to ``user``; nothing when not root."""
    if os.geteuid() != 0 or user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def give_to(path: Path, user: str | None) -> None:
    """Make ``user`` the owner of ``path`` when this runs as root; nothing otherwise."""
    if os.geteuid() == 0 and user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def own_dir(prefix: str, user: str | None) -> Path:
    """A fresh directory under /tmp the daemon's user may write (pytest's are root-only)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    give_to(path, user)
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
