"""A real ``codex-ingest serve`` in a child process, on the test database:
for tests whose clients are synchronous (schemathesis, hypothesis) or must
not share the server's event loop (slowloris); and a real Standard Webhooks
receiver (tests/delivery/receivers.py) in a child process, for a live
service's destinations."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.local import free_port
from tests.cli import BASE_ENV, wait_healthy
from tests.helpers import SECRET

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Live:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_file: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        """What the service wrote to stderr so far (JSON lines)."""
        with open(self.log_file, encoding="utf-8", errors="replace") as f:
            return f.read()


@contextlib.contextmanager
def serve(database_url: str, **env: str) -> Iterator[Live]:
    """Serve on a free port with one worker; stop with SIGTERM afterwards."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="codex-live-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "codex_ingest", "serve", "--no-migrate", "--workers", "1", "--port", str(port)],
        env={**BASE_ENV, "WEBHOOK_SECRET": SECRET, "DATABASE_URL": database_url, "DB_POOL_MAX": "4", **env},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        wait_healthy(port, proc, output=lambda: Path(log.name).read_text(errors="replace"))
        yield Live("127.0.0.1", port, proc, log.name)
    finally:
        _stop(proc)
        log.close()
        os.unlink(log.name)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def receiver(secret: str, behaviour: str = "ok", *options: str) -> Iterator[str]:
    """``python -m tests.delivery.receivers`` on a free port of 127.0.0.1, verifying
    every request with ``secret`` (whsec_<base64>) and answering as ``behaviour``
    says (``options``: more of its flags, ``--times 2`` say); yields the URL to declare as a destination's ``url``. Stopped with SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.delivery.receivers", "--behaviour", behaviour, "--port", "0",
         "--secret", secret, *options],
        cwd=REPO,
        env=BASE_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()  # its port, once it listens ("" if it died)
        if not first.isdigit():
            raise AssertionError(f"the receiver did not start (exit code {proc.poll()}, printed {first!r})")
        yield f"http://127.0.0.1:{int(first)}/hook"
    finally:
        _stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()
