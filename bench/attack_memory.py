"""What an unauthenticated client on the network can make a worker hold,
at the size issue 18 reported, against a given tree's ``codex-ingest serve``.

    python -m bench.attack_memory --tree before=/tmp/base-18-memory --tree after=. \\
        [--rounds 2] [--workers 2] [--attacks bodies,pipeline,pages] [--hold 50] [--out FILE]

The attacks (each against a fresh ``serve``):

* ``bodies``: 150 connections each send ``POST /pos/x/ingest/batch`` with a
  wrong ``X-Signature``, ``Content-Length: 8388608`` and 8 MiB - 1 byte of
  body, then wait;
* ``pipeline``: 200 sockets pipeline ``GET /openapi.json`` (up to 20,000
  requests each, as many as the sockets take in 5 s) and never read;
* ``pages``: 2 sockets ask for a ``GET /events`` page of 280 events of
  1 MiB each (seeded by SQL once; ``READ_PAGE_MAX_BYTES`` is lifted so that
  the connection, not the page cap, is what is measured, and
  ``DB_COMMAND_TIMEOUT`` raised to 60 s for the statement) and never read.

Each tree is served with its own code (cwd and PYTHONPATH set to it, and
``codex_ingest.__file__`` checked to be there), on one embedded PostgreSQL.
Trees alternate within a round and swap order between rounds, so this
machine's drift falls on both. For each point: the workers' RSS (VmRSS from
/proc, the largest worker) before, at its peak and when the hold ends; the attack's
connections the server closed (its side gone from /proc/net/tcp), when
(seconds after each opened) and what they were answered; and signed single events sent throughout on 2
keep-alive connections, 20 ms apart: their statuses and p50/p99, alone (3 s
before the attack) and during it. One JSON line per point on stdout;
``--out`` writes them all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from bench.database import connection, embedded_database
from bench.local import status_kb
from bench.output import log, print_json, write_json
from bench.service import serving_tree, tree_env, tree_package, worker_pids

SECRET = "bench-attack-secret"
READ_TOKEN = "bench-attack-read-token-0123456789"
BATCH_LIMIT = 8 * 1024 * 1024  # MAX_BATCH_BYTES's default: the attack's bodies are declared this size
BODY_CONNECTIONS = 150
PIPELINE_SOCKETS = 200
PIPELINE_MAX_REQUESTS = 20_000
PAGE_EVENTS = 280
PAGE_EVENT_BYTES = 1024 * 1024
PAGE_SOCKETS = 2


# -- the service -------------------------------------------------------------------


@contextlib.contextmanager
def serving(tree: Path, database_url: str, workers: int, env: dict[str, str]) -> Iterator[tuple[int, list[int]]]:
    """``serve`` from ``tree`` on a free port until the block ends: (port, worker pids)."""
    with tempfile.NamedTemporaryFile(prefix="attack-memory-", suffix=".log") as log_file:
        service_env = tree_env(tree, {"DATABASE_URL": database_url, "WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "WARNING",
                                      "CODEX_API_TOKENS": f"{READ_TOKEN}=*", **env})
        with serving_tree(tree, service_env, workers, output=log_file) as (proc, port):
            yield port, worker_pids(proc, workers)


class RssSampler:
    """Every worker's VmRSS every 0.1 s, in a thread: the largest worker's now and at its peak, in MB."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> float:
        sizes = [kb / 1024 for pid in self.pids if (kb := status_kb(pid, "VmRSS")) is not None]
        return round(max(sizes), 1)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, self.now())

    def __enter__(self) -> RssSampler:
        self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- signed ingest, alongside ---------------------------------------------------------


class Probe:
    """Signed single events on 2 keep-alive connections, 20 ms apart: statuses and latencies."""

    def __init__(self, port: int, tag: str) -> None:
        self.url = f"http://127.0.0.1:{port}/pos/probe/ingest"
        self.tag = tag
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.running = True

    async def run(self, seconds: float | None = None) -> None:
        stop_at = None if seconds is None else time.monotonic() + seconds
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=2)) as session:
            async def loop(lane: int) -> None:
                n = 0
                while self.running and (stop_at is None or time.monotonic() < stop_at):
                    body = b'{"probe":"%s","lane":%d,"n":%d,"at":%f}' % (self.tag.encode(), lane, n, time.time())
                    sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                    started = time.perf_counter()
                    try:
                        async with session.post(self.url, data=body, headers={
                            "Content-Type": "application/json", "X-Tenant-Id": "probe", "X-Signature": sig,
                        }) as resp:
                            await resp.read()
                            self.statuses[str(resp.status)] += 1
                            self.latencies.append(time.perf_counter() - started)
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        self.statuses[type(exc).__name__] += 1
                    n += 1
                    await asyncio.sleep(0.02)

            await asyncio.gather(loop(0), loop(1))

    def figures(self) -> dict[str, Any]:
        ms = sorted(x * 1000 for x in self.latencies)
        return {
            "statuses": dict(self.statuses),
            "p50_ms": round(statistics.median(ms), 1) if ms else None,
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1) if ms else None,
        }


# -- the attacks ----------------------------------------------------------------------


def status_of(data: bytes) -> int | None:
    parts = data.split(b" ", 2)
    return int(parts[1]) if data.startswith(b"HTTP/") and len(parts) > 1 and parts[1].isdigit() else None


async def until_closed(sock: socket.socket, deadline: float) -> tuple[int | None, float | None]:
    """Read what the server answers until it closes (or ``deadline``): (status, loop time closed or None)."""
    loop = asyncio.get_running_loop()
    status = None
    data = b""
    while loop.time() < deadline:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout=deadline - loop.time())
        except TimeoutError:
            break
        except OSError:
            return status, loop.time()
        if not chunk:
            return status, loop.time()
        if status is None:
            data += chunk
            status = status_of(data)
    return status, None


def summary(opened: list[float], closed: list[float | None], statuses: list[int | None]) -> dict[str, Any]:
    lives = sorted(c - o for o, c in zip(opened, closed, strict=True) if c is not None)
    return {
        "connections": len(opened),
        "closed_by_server": len(lives),
        "closed_after_s": {"min": round(lives[0], 1), "median": round(statistics.median(lives), 1),
                           "max": round(lives[-1], 1)} if lives else None,
        "answers": dict(Counter("none" if s is None else str(s) for s in statuses)),
    }


async def attack_bodies(port: int, hold: float, at_hold_end: Callable[[], None]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    head = (b"POST /pos/x/ingest/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"X-Tenant-Id: attacker\r\nX-Signature: sha256=" + b"0" * 64
            + b"\r\nContent-Length: %d\r\n\r\n" % BATCH_LIMIT)
    body = b"x" * (BATCH_LIMIT - 1)  # one byte short: the server waits for it
    opened: list[float] = []
    closed: list[float | None] = []
    statuses: list[int | None] = []
    sent_all = 0

    async def one() -> None:
        nonlocal sent_all
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            start = loop.time()
            try:
                await loop.sock_sendall(sock, head)
                await loop.sock_sendall(sock, body)  # sent from the one buffer, not copied per socket
                sent_all += 1
            except OSError:
                pass
            status, end = await until_closed(sock, start + hold)
            opened.append(start)
            closed.append(end)
            statuses.append(status)
        finally:
            sock.close()

    await asyncio.gather(*(one() for _ in range(BODY_CONNECTIONS)))
    return {**summary(opened, closed, statuses), "bodies_sent_whole": sent_all}


def server_side_peers(port: int) -> set[int]:
    """The client ports of the connections the server still holds on ``port``, from /proc/net/tcp:
    what the server did, whatever the client (which reads nothing) has yet to notice."""
    peers = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if int(local.rsplit(":", 1)[1], 16) == port and state != "0A":  # 0A: the listener
            peers.add(int(remote.rsplit(":", 1)[1], 16))
    return peers


async def hold_unread(port: int, socks: list[socket.socket], opened: list[float], hold: float) -> list[float | None]:
    """Watch sockets that never read, for ``hold`` seconds: when the server closed each (its side is gone)."""
    loop = asyncio.get_running_loop()
    closed: list[float | None] = [None] * len(socks)
    ports = [s.getsockname()[1] for s in socks]
    deadline = min(opened) + hold
    while loop.time() < deadline:  # to the end either way: what the worker holds is read then
        held = server_side_peers(port)
        for i, client_port in enumerate(ports):
            if closed[i] is None and client_port not in held:
                closed[i] = loop.time()
        await asyncio.sleep(0.25)
    return closed


def peeked_status(sock: socket.socket) -> int | None:
    with contextlib.suppress(OSError):
        return status_of(sock.recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    return None


async def attack_pipeline(port: int, hold: float, at_hold_end: Callable[[], None]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    request = b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    burst = request * PIPELINE_MAX_REQUESTS
    socks = []
    opened = []
    for _ in range(PIPELINE_SOCKETS):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        socks.append(sock)
        opened.append(loop.time())
    offsets = [0] * len(socks)
    stop_at = loop.time() + 5
    try:
        while loop.time() < stop_at and any(o < len(burst) for o in offsets):
            for i, sock in enumerate(socks):
                if offsets[i] < len(burst):
                    with contextlib.suppress(BlockingIOError, OSError):
                        offsets[i] += sock.send(burst[offsets[i]: offsets[i] + 65536])
            await asyncio.sleep(0.01)
        closed = await hold_unread(port, socks, opened, hold)
        at_hold_end()  # before this client closes them
        statuses = [peeked_status(s) for s in socks]
    finally:
        for sock in socks:
            sock.close()
    return {**summary(opened, closed, statuses),
            "requests_sent_per_socket": {"min": min(offsets) // len(request), "max": max(offsets) // len(request)}}


async def seed_pages(database_url: str) -> None:
    async with connection(database_url) as conn:
        if await conn.fetchval("SELECT count(*) FROM events WHERE tenant_id = 'big'") >= PAGE_EVENTS:
            return
        await conn.execute(
            "INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, content_type)"
            " SELECT 'big', 'seed', 'k' || g, sha256(b), b, 'application/json'"
            " FROM generate_series(1, $1::int) AS g,"
            " LATERAL (SELECT convert_to('{\"n\":' || g || ',\"p\":\"' || repeat('x', $2::int) || '\"}', 'UTF8') AS b) AS x",
            PAGE_EVENTS, PAGE_EVENT_BYTES - 32,
        )


async def attack_pages(port: int, hold: float, at_hold_end: Callable[[], None]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    request = (b"GET /events?tenant=big&limit=1000 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Authorization: Bearer " + READ_TOKEN.encode() + b"\r\n\r\n")
    socks = []
    opened = []
    for _ in range(PAGE_SOCKETS):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # the kernel takes little of the page
        sock.connect(("127.0.0.1", port))
        sock.sendall(request)
        sock.setblocking(False)
        socks.append(sock)
        opened.append(loop.time())
    try:
        closed = await hold_unread(port, socks, opened, hold)
        at_hold_end()  # before this client closes them
        statuses = [peeked_status(s) for s in socks]
    finally:
        for sock in socks:
            sock.close()
    return summary(opened, closed, statuses)


ATTACKS: dict[str, Callable[[int, float, Callable[[], None]], Awaitable[dict[str, Any]]]] = {
    "bodies": attack_bodies, "pipeline": attack_pipeline, "pages": attack_pages,
}


async def point(name: str, tree: Path, attack: str, args: argparse.Namespace, database_url: str) -> dict[str, Any]:
    # A page this large takes its statement longer than the default 5 s on this machine.
    env = {"READ_PAGE_MAX_BYTES": str(2 * 10**9), "DB_COMMAND_TIMEOUT": "60"} if attack == "pages" else {}
    with serving(tree, database_url, args.workers, env) as (port, pids):
        alone = Probe(port, f"{name}-{attack}-alone")
        await alone.run(3.0)
        during = Probe(port, f"{name}-{attack}-during")
        with RssSampler(pids) as rss:
            before = rss.now()
            probing = asyncio.create_task(during.run())
            started = time.monotonic()
            # What the worker still holds when the hold ends, with the unread sockets still open.
            at_end: list[float] = []
            result = await ATTACKS[attack](port, args.hold, lambda: at_end.append(rss.now()))
            await asyncio.sleep(max(0.0, started + args.hold - time.monotonic()))
            end = at_end[0] if at_end else rss.now()
            during.running = False
            await probing
        return {
            "tree": name, "attack": attack, "workers": args.workers,
            "rss_mb": {"before": before, "peak": rss.peak, "at_hold_end": end},
            **result,
            "signed_ingest": {"alone": alone.figures(), "during": during.figures()},
        }


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    trees = [(name, Path(path)) for name, _, path in (t.partition("=") for t in args.tree)]
    for _, tree in trees:
        tree_package(tree)
    results = []
    with embedded_database("attack-memory-") as (_, url, _):
        if "pages" in args.attacks:
            await seed_pages(url)
        for round_ in range(args.rounds):
            order = trees if round_ % 2 == 0 else trees[::-1]
            for attack in args.attacks:
                for name, tree in order:
                    log(f"round {round_ + 1}: {attack} against {name} ({tree})")
                    doc = {"round": round_ + 1, **await point(name, tree, attack, args, url)}
                    print_json(doc)
                    results.append(doc)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, help="NAME=PATH of a tree to serve from")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--attacks", type=lambda s: s.split(","), default=list(ATTACKS))
    parser.add_argument("--hold", type=float, default=50.0, help="seconds each attack's connections are held")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if unknown := set(args.attacks) - set(ATTACKS):
        parser.error(f"unknown attacks: {', '.join(sorted(unknown))}")
    results = asyncio.run(main_async(args))
    if args.out is not None:
        write_json(args.out, results)


if __name__ == "__main__":
    main()
