"""The codex-ingest command in a child process: run it, start ``serve``,
wait until it is healthy, post an event to it, stop it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from codex_ingest.settings import SERVE_OPTIONS
from tests.helpers import SECRET, sign

ROOT = Path(__file__).resolve().parent.parent
# The environment without any of serve's variables: each test sets its own.
BASE_ENV = {k: v for k, v in os.environ.items() if k not in {o.env for o in SERVE_OPTIONS}}


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "codex_ingest", *args],
        env={**BASE_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def post(port: int, body: bytes) -> tuple[int, dict]:
    """POST ``body`` as a signed Clover event of tenant m-1; (status, JSON answer)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/pos/clover/ingest",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "X-Tenant-Id": "m-1", "X-Signature": sign(body)},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60, output: Callable[[], str] | None = None) -> None:
    """Until /healthz answers 200; if serve exits first, fail with what it printed
    (its stderr, or ``output()`` when it writes elsewhere)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            printed = output() if output is not None else (proc.stderr.read() if proc.stderr else "")
            raise AssertionError(f"serve exited early: {printed}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("serve did not become healthy")


def start_serve(data_dir: Path, port: int) -> subprocess.Popen:
    """``serve --data-dir``: its own embedded PostgreSQL in ``data_dir``; stdout and stderr piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "codex_ingest", "serve", "--data-dir", str(data_dir), "--port", str(port)],
        env={**BASE_ENV, "WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "DEBUG"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    """SIGTERM, then wait: (exit code, what it wrote to stderr)."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err
