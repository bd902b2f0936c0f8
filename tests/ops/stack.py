"""A real ``codex-ingest serve`` with several workers and a real Prometheus
scraping it, both on 127.0.0.1, for tests/ops.

tests/live.py's ``serve`` runs one worker (``--workers 1`` on its command
line wins over a WORKERS variable), so ``serve_workers`` here is its
several-worker sibling: same environment, same health wait.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.local import free_port
from tests.helpers import SECRET
from tests.live import BASE_ENV
from tests.cli import wait_healthy

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
RULES_TEST = PROMETHEUS_DIR / "rules_test.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "codex-ingest.json"
JOB = "codex-ingest"
# The service's METRICS_TOKEN in tests/ops; Prometheus reads it from the file its config names.
METRICS_TOKEN = "ops-metrics-token-0123456789"


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL to its whole process group (the service's workers
    too: it was started in a session of its own) if it has not exited within
    ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass(frozen=True)
class Service:
    port: int
    log_file: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


@contextlib.contextmanager
def serve_workers(database_url: str, directory: Path, workers: int, **env: str) -> Iterator[Service]:
    port = free_port()
    log_file = directory / "serve.log"
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "codex_ingest", "serve", "--no-migrate", "--workers", str(workers),
             "--host", "127.0.0.1", "--port", str(port)],
            env={**BASE_ENV, "WEBHOOK_SECRET": SECRET, "DATABASE_URL": database_url, "DB_POOL_MAX": "4", **env},
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
        )
        try:
            wait_healthy(port, proc, output=lambda: log_file.read_text(errors="replace"))
            yield Service(port, log_file)
        finally:
            _stop(proc, timeout=60)


class PrometheusError(Exception):
    """The query API answered an error (bad expression, failed evaluation)."""


@dataclass(frozen=True)
class Prometheus:
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return (self.directory / "prometheus.log").read_text(errors="replace")

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                doc = json.load(resp)
        except urllib.error.HTTPError as exc:  # 400/422: the error is in the JSON body
            with exc:
                doc = json.load(exc)
        if doc.get("status") != "success":
            raise PrometheusError(f"{doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result: its vector (or a scalar as a one-element list)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]


def prometheus_config(target: str, rules: Path, interval: str = "1s") -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml, scraping ``target`` every ``interval``,
    with its rule file by absolute path (and its token file as it names it)."""
    config = yaml.safe_load(CONFIG.read_text())
    config["global"].update(scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval)
    config["rule_files"] = [str(rules)]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == JOB]
    job["static_configs"] = [{"targets": [target]}]
    return config


def credentials_file(config: dict[str, Any]) -> str:
    """The file the job's scrape reads its bearer token from (relative: to the configuration's directory)."""
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == JOB]
    return str(job["authorization"]["credentials_file"])


def write_token(config: dict[str, Any], directory: Path, token: str = METRICS_TOKEN) -> Path:
    """Put ``token`` where ``config`` (written into ``directory``) reads it from, readable by its owner alone."""
    path = directory / credentials_file(config)
    path.touch(mode=0o600)
    path.write_text(token)
    return path


@contextlib.contextmanager
def run_prometheus(binary: str, config: dict[str, Any], directory: Path, token: str = METRICS_TOKEN) -> Iterator[Prometheus]:
    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    write_token(config, directory, token)
    port = free_port()
    with open(directory / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config_file}", f"--web.listen-address=127.0.0.1:{port}",
             f"--storage.tsdb.path={directory / 'data'}", "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            cwd=directory, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        prometheus = Prometheus(port, directory)
        try:
            _wait_ready(prometheus, proc)
            yield prometheus
        finally:
            _stop(proc, timeout=30)


def _wait_ready(prometheus: Prometheus, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {proc.returncode}:\n{prometheus.log()}")
        try:
            with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"prometheus not ready after {timeout} s:\n{prometheus.log()}")


def eventually(check: Callable[[], Any], timeout: float = 30, interval: float = 0.5) -> Any:
    """``check()``'s first truthy answer; after ``timeout`` the last assertion (or a plain one) is raised."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = check()
            if answer:
                return answer
            failure: AssertionError = AssertionError(f"still {answer!r} after {timeout} s")
        except AssertionError as exc:
            failure = exc
        if time.monotonic() > deadline:
            raise failure
        time.sleep(interval)


def binaries() -> tuple[str, str] | None:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    return (prometheus, promtool) if prometheus and promtool else None
