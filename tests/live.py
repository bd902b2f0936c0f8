"""A real ``codex-ingest serve`` in a child process, on the test database:
for tests whose clients are synchronous (schemathesis, hypothesis) or must
not share the server's event loop (slowloris)."""

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
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        os.unlink(log.name)

