"""Real nginx, PgBouncer and replicas for the scale-out tests.

* ``nginx(ports)`` runs nginx with a copy of deploy/nginx/codex-ingest.conf,
  its ``listen`` and upstream ``server`` lines rewritten to free ports on
  127.0.0.1, wrapped in a minimal main configuration (temp paths and pid in
  a directory of its own, no access log), as ``nobody`` when run as root.
* ``pgbouncer(url)`` (from bench/pgbouncer.py; bench/pgbouncer_cost.py measures its cost)
  runs pgbouncer with a copy of deploy/pgbouncer/pgbouncer.ini on a free
  127.0.0.1 port, ``auth_type = trust``, as the owner of PostgreSQL's socket
  directory when run as root (pgbouncer refuses root); it yields the URL to
  connect through it.
* ``replicas(url, n)`` starts n one-worker ``codex-ingest serve`` processes
  (bench/service.Service, each in a process group of its own) on one database.
* ``dedup_load`` runs ``python -m bench.dedup_load`` and returns its result.
* ``RetryingLoad`` sends a signed plan and resends every request that got
  no 2xx until it gets one, within bounded attempts and time.

Every process runs in a session of its own and is killed with its whole
group on exit, on failure too.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.service import Service
from bench.local import free_port
from bench.daemon import Daemon, binary, own_dir, wait_for_port
from bench.pgbouncer import PgBouncer, pgbouncer
from bench.plan import PlannedRequest

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "deploy" / "nginx" / "codex-ingest.conf"

__all__ = ["PgBouncer", "RetryingLoad", "binary", "dedup_load", "nginx", "pgbouncer", "replicas", "when"]


# -- nginx ---------------------------------------------------------------------

_LISTEN = re.compile(r"^(?P<indent>[ \t]*)listen[ \t]+[^;]+;", re.MULTILINE)
_UPSTREAM_SERVER = re.compile(r"^(?P<indent>[ \t]*)server[ \t]+127\.0\.0\.1:\d+(?P<rest>[^;]*);", re.MULTILINE)


def render_nginx_conf(template: str, listen_port: int, upstream_ports: list[int]) -> str:
    """The deploy snippet with its one ``listen`` and its upstream ``server`` lines on these ports."""
    listens = _LISTEN.findall(template)
    servers = _UPSTREAM_SERVER.findall(template)
    if len(listens) != 1 or len(servers) < 1:
        raise ValueError(f"expected one listen line and upstream server lines, found {len(listens)} and {len(servers)}")
    text = _LISTEN.sub(lambda m: f"{m['indent']}listen 127.0.0.1:{listen_port};", template)
    first = _UPSTREAM_SERVER.search(text)
    assert first is not None
    servers_text = "\n".join(f"{first['indent']}server 127.0.0.1:{p}{first['rest']};" for p in upstream_ports)
    text = _UPSTREAM_SERVER.sub("", text)  # every template server line goes ...
    return text[: first.start()] + servers_text + text[first.start():]  # ... and ours take the first one's place


@dataclass
class Nginx:
    port: int
    directory: Path
    daemon: Daemon

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        try:
            return (self.directory / "error.log").read_text(errors="replace")
        except OSError:
            return ""


@contextlib.contextmanager
def nginx(upstream_ports: list[int], user: str = "nobody") -> Iterator[Nginx]:
    """nginx on a free 127.0.0.1 port in front of these ports, with deploy/nginx/codex-ingest.conf."""
    executable = binary("nginx")
    if executable is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx)")
    port = free_port()
    directory = own_dir("codex-nginx-", user)
    (directory / "codex-ingest.conf").write_text(render_nginx_conf(NGINX_CONF.read_text(), port, upstream_ports))
    temp = "\n".join(f"    {kind}_temp_path {directory / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (directory / "nginx.conf").write_text(
        "worker_processes 1;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        "    access_log off;\n"
        f"{temp}\n"
        f"    include {directory / 'codex-ingest.conf'};\n"
        "}\n"
    )
    for path in directory.iterdir():
        path.chmod(0o644)
    directives = f"daemon off; master_process on; pid {directory / 'nginx.pid'}; error_log {directory / 'error.log'} warn;"
    daemon = Daemon(
        "nginx", [executable, "-c", str(directory / "nginx.conf"), "-p", str(directory), "-g", directives],
        directory / "stderr.log", user,
    )
    try:
        daemon.start()
        wait_for_port(port, daemon)
        yield Nginx(port, directory, daemon)
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)


# -- replicas --------------------------------------------------------------------


@contextlib.contextmanager
def replicas(database_url: str, count: int, secret: str, log_dir: Path, **env: str) -> Iterator[list[Service]]:
    """``count`` one-worker ``codex-ingest serve`` processes on one database, started at once."""
    services = [
        Service(database_url, free_port(), secret, log_dir / f"replica-{n}.log", workers=1,
                env={"LOG_LEVEL": "WARNING", **env})
        for n in range(count)
    ]
    errors: list[BaseException] = []

    def start(service: Service) -> None:
        try:
            service.start()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in services]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        yield services
    finally:
        for service in services:
            service.cleanup()


def dedup_load(url: str, *, source: str, tenant: str, total: int, unique: int, concurrency: int,
               secret: str, out: Path) -> dict[str, Any]:
    """``python -m bench.dedup_load`` as its users run it; its result JSON."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.dedup_load", "--url", url, "--source", source, "--tenant", tenant,
         "--total", str(total), "--unique", str(unique), "--concurrency", str(concurrency),
         "--secret", secret, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"dedup_load failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    result: dict[str, Any] = orjson.loads(out.read_bytes())
    return result


# -- a client that retries -----------------------------------------------------

RETRYABLE = {502, 503, 504}


@dataclass
class RetryingLoad:
    """Sends a plan, resending each request that got no 2xx (502/503/504, or no answer)
    until it gets one: at most ``max_attempts`` per request, and nothing after ``deadline_s``.

    ``answers`` holds, per idempotency key, every 2xx: (status, event_id).
    """

    url: str
    plan: list[PlannedRequest]
    concurrency: int
    max_attempts: int = 40
    deadline_s: float = 150.0
    done: int = 0                                           # requests settled (2xx, or given up)
    answers: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    failed_attempts: dict[str, int] = field(default_factory=dict)  # status or error name -> count
    retried_requests: int = 0                               # requests that needed more than one attempt
    gave_up: list[str] = field(default_factory=list)
    unexpected: list[tuple[str, int, bytes]] = field(default_factory=list)  # 4xx and the like
    elapsed_s: float = 0.0

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        timeout = aiohttp.ClientTimeout(total=30)
        began = time.monotonic()
        deadline = began + self.deadline_s
        position = 0
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def one(item: PlannedRequest) -> None:
                key = item.headers["Idempotency-Key"]
                for attempt in range(1, self.max_attempts + 1):
                    try:
                        async with session.post(self.url, data=item.body, headers=item.headers) as resp:
                            body = await resp.read()
                            status = resp.status
                    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                        status, body = 0, type(exc).__name__.encode()
                    if status in (200, 201):
                        self.answers.setdefault(key, []).append((status, int(orjson.loads(body)["event_id"])))
                        if attempt > 1:
                            self.retried_requests += 1
                        return
                    if status and status not in RETRYABLE:
                        self.unexpected.append((key, status, body[:300]))
                        return
                    label = str(status) if status else body.decode()
                    self.failed_attempts[label] = self.failed_attempts.get(label, 0) + 1
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(min(1.0, 0.05 * 2 ** (attempt - 1)))
                self.gave_up.append(key)

            async def worker() -> None:
                nonlocal position
                while position < len(self.plan):
                    item = self.plan[position]
                    position += 1
                    await one(item)
                    self.done += 1

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        self.elapsed_s = time.monotonic() - began

    def summary(self) -> dict[str, Any]:
        statuses = [status for answers in self.answers.values() for status, _ in answers]
        return {
            "total": len(self.plan),
            "accepted": statuses.count(201),
            "duplicates": statuses.count(200),
            "keys_acknowledged": len(self.answers),
            "retried_requests": self.retried_requests,
            "failed_attempts": dict(sorted(self.failed_attempts.items())),
            "gave_up": len(self.gave_up),
            "unexpected": len(self.unexpected),
            "rps": round(len(self.plan) / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "elapsed_s": round(self.elapsed_s, 2),
        }


async def when(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
