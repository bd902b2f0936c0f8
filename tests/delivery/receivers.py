"""Real HTTP receivers on 127.0.0.1 for the delivery tests and benches.

The project never mocks an HTTP receiver: each one here is an aiohttp server
(``AppRunner`` + ``TCPSite`` on port 0, the bound port read back from the
site) answering the way a test asks, and verifying EVERY request with the
``standardwebhooks`` library, so the service's signatures are checked by code
we did not write.

In a test::

    from tests.delivery import receivers as rx

    async with rx.receiver(rx.fails_then(2, per="webhook-id"), secret="whsec_...") as r:
        ...                                  # point a destination at r.url, deliver
        await r.wait_for(3)                  # 3 requests arrived (never a guessed sleep)
        assert [a.status for a in r.arrivals] == [500, 500, 200]
        assert r.verified_ids() == ["evt_1"] * 3 and not r.unverified()

For a bench, in a process of its own (first line on stdout: the port; one JSON
line per request in the ``--arrivals`` file, written when its answer is
settled)::

    python -m tests.delivery.receivers --behaviour ok --port 0 --secret whsec_... --arrivals /tmp/a.jsonl

Behaviours (``Behaviour``: an async callable from a ``Call`` to an outcome,
``Reply``, ``Reset`` or ``Hang``) compose: ``fails_then(n, failure=..., then=...)``
and ``script(...)`` run other behaviours, ``slow(delay, then=...)`` delays one.
They hold state (counts): give each receiver its own. ``r.behaviour`` may be
replaced while the receiver runs (a destination that recovers, say).

Every request is recorded as an ``Arrival`` (arrival order and monotonic time,
the Standard Webhooks headers and the verification outcome, ``X-Tenant-Id``,
``X-Source``, ``Idempotency-Key``, the body bytes, then the status answered).
A bug in a behaviour (an exception) never hangs a test or escapes into aiohttp:
the request is answered 500, and ``until``/``wait_for`` and leaving the
``async with`` block raise AssertionError naming it.

Limit: ``standardwebhooks`` decodes the body as UTF-8 before checking it, so a
body that is not UTF-8 is recorded as unverified (the error says so), even
when its signature is right.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TextIO, TypeVar

from aiohttp import web
from standardwebhooks import Webhook

T = TypeVar("T")

HOST = "127.0.0.1"
# aiohttp's backstop when a handler does not end at close: it then cancels it.
# The receiver's own close wakes every waiting handler first, so this is never
# reached unless the harness is broken (the handler's answer is then "cancelled").
SHUTDOWN_BACKSTOP_SECONDS = 5.0

Per = Literal["overall", "webhook-id"]


# --------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Reply:
    """Answer with this status, headers and body."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class Reset:
    """Close the connection without answering. ``hard``: an RST (SO_LINGER 0),
    the client sees ECONNRESET; otherwise a plain close (the client sees the
    server disconnect before any answer)."""

    hard: bool = True


@dataclass(frozen=True)
class Hang:
    """Never answer; at the receiver's close the connection is dropped."""


Outcome = Reply | Reset | Hang


@dataclass
class Arrival:
    """One request, as the receiver got it and answered it."""

    order: int  # 0, 1, 2, ... in the order requests arrived (body fully read) at this receiver
    at: float  # time.monotonic() then (system-wide on Linux: comparable across processes)
    wall: float  # time.time() then
    method: str
    path: str
    webhook_id: str | None
    webhook_timestamp: str | None
    webhook_signature: str | None
    verified: bool  # standardwebhooks verified the request with EVERY secret of the receiver
    error: str | None  # why not (per secret), else None
    tenant: str | None  # X-Tenant-Id
    source: str | None  # X-Source
    idempotency_key: str | None
    content_type: str | None
    body: bytes
    headers: tuple[tuple[str, str], ...]  # every header as received, in order
    # Settled by the answer:
    status: int | None = None  # the status answered; None: none was (reset, hang, pending)
    answer: str = "pending"  # pending | replied | reset | hanging | hung | cancelled | harness-error
    answered_at: float | None = None  # time.monotonic() when the answer was settled
    harness_error: str | None = None  # the behaviour's traceback, when it raised

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), else None."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in {"body", "headers"}}
        out["body_base64"] = base64.b64encode(self.body).decode("ascii")
        out["headers"] = [list(h) for h in self.headers]
        return out


@dataclass
class Call:
    """What a behaviour is given: the request's record, the request, and the receiver."""

    arrival: Arrival
    request: web.Request
    receiver: Receiver

    async def pause(self, seconds: float) -> bool:
        """Wait ``seconds``, cut short by the receiver's close. True: the full
        time passed; False: the receiver is closing (then answer ``Reset()``)."""
        return await self.receiver._pause(seconds)


class Behaviour(Protocol):
    async def __call__(self, call: Call) -> Outcome: ...


# --------------------------------------------------------------------------- behaviours


@dataclass
class Respond:
    """Always the same reply."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    async def __call__(self, call: Call) -> Outcome:
        return Reply(self.status, dict(self.headers), self.body)


def ok(status: int = 200, body: bytes = b"") -> Respond:
    """Always 2xx (200 unless told)."""
    if not 200 <= status < 300:
        raise ValueError(f"ok() answers 2xx, not {status}")
    return Respond(status, {}, body)


def error(status: int = 500, body: bytes = b"receiver says no") -> Respond:
    """Always this error status (500 unless told)."""
    return Respond(status, {}, body)


def gone() -> Respond:
    """Always 410 Gone."""
    return Respond(410, {}, b"gone")


def too_many_requests(retry_after: int | str | None) -> Respond:
    """Always 429, with ``Retry-After: <retry_after>`` (seconds or an HTTP date) unless None."""
    return Respond(429, _retry_after(retry_after), b"slow down")


def unavailable(retry_after: int | str | None) -> Respond:
    """Always 503, with ``Retry-After: <retry_after>`` unless None."""
    return Respond(503, _retry_after(retry_after), b"unavailable")


def redirect(location: str, status: int = 302) -> Respond:
    """Always a redirect (302 unless told) to ``location``; the receiver never requests it itself."""
    return Respond(status, {"Location": location}, b"")


def _retry_after(value: int | str | None) -> dict[str, str]:
    return {} if value is None else {"Retry-After": str(value)}


@dataclass
class ResetConnection:
    """Always close the connection without answering (after reading the request)."""

    hard: bool = True

    async def __call__(self, call: Call) -> Outcome:
        return Reset(self.hard)


def reset(hard: bool = True) -> ResetConnection:
    return ResetConnection(hard)


@dataclass
class Hanging:
    """Never answer, until the receiver closes."""

    async def __call__(self, call: Call) -> Outcome:
        return Hang()


def hang() -> Hanging:
    return Hanging()


@dataclass
class Slow:
    """Wait ``delay`` seconds, then do as ``then`` does (cut short at the receiver's close)."""

    delay: float
    then: Behaviour = field(default_factory=ok)

    async def __call__(self, call: Call) -> Outcome:
        if not await call.pause(self.delay):
            return Reset()
        return await self.then(call)


def slow(delay: float, then: Behaviour | None = None) -> Slow:
    return Slow(delay, then if then is not None else ok())


@dataclass
class Script:
    """The k-th request (counted overall, or per ``webhook-id``) is answered by
    ``steps[k]``; once the steps are used up, by ``then``."""

    steps: Sequence[Behaviour]
    then: Behaviour
    per: Per = "overall"
    seen: dict[str | None, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.per not in ("overall", "webhook-id"):
            raise ValueError(f"per must be 'overall' or 'webhook-id', not {self.per!r}")

    async def __call__(self, call: Call) -> Outcome:
        key = call.arrival.webhook_id if self.per == "webhook-id" else None
        k = self.seen.get(key, 0)
        self.seen[key] = k + 1
        step = self.steps[k] if k < len(self.steps) else self.then
        return await step(call)


def script(*steps: Behaviour, then: Behaviour | None = None, per: Per = "overall") -> Script:
    return Script(list(steps), then if then is not None else ok(), per)


def fails_then(n: int, *, failure: Behaviour | None = None, then: Behaviour | None = None,
               per: Per = "overall") -> Script:
    """The first ``n`` requests (overall, or of each ``webhook-id``) fail as
    ``failure`` does (500 unless told: any behaviour, a reset or a 429 say), the
    rest are answered by ``then`` (200 unless told)."""
    if n < 0:
        raise ValueError("n >= 0")
    fail = failure if failure is not None else error()
    return Script([fail] * n, then if then is not None else ok(), per)


# --------------------------------------------------------------------------- the receiver


class Receiver:
    """A real HTTP server on 127.0.0.1 answering as ``behaviour`` says and verifying
    every request with ``standardwebhooks`` against ``secret`` (one ``whsec_`` secret,
    or several: then each must verify, as a receiver mid-rotation checks both).

    Use as ``async with Receiver(...) as r`` (or ``receiver(...)``); ``r.url`` is
    where to send. ``on_settled`` is called with each Arrival once its answer is
    settled (the CLI writes JSON lines with it)."""

    def __init__(
        self,
        behaviour: Behaviour,
        *,
        secret: str | Sequence[str],
        host: str = HOST,
        port: int = 0,
        path: str = "/hook",
        client_max_size: int = 64 * 1024 * 1024,
        on_settled: Callable[[Arrival], None] | None = None,
    ) -> None:
        secrets = [secret] if isinstance(secret, str) else list(secret)
        if not secrets:
            raise ValueError("a receiver needs at least one secret: it verifies every request")
        self.secrets = secrets
        self._webhooks = [Webhook(s) for s in secrets]  # a malformed secret fails here, at once
        self.behaviour = behaviour
        self.host = host
        self.path = path if path.startswith("/") else "/" + path
        self._port_wanted = port
        self._client_max_size = client_max_size
        self._on_settled = on_settled
        self.arrivals: list[Arrival] = []
        self.harness_errors: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # ----------------------------------------------------------------- life

    @property
    def url(self) -> str:
        """Where to send: ``http://127.0.0.1:<port><path>``."""
        return f"{self.base_url}{self.path}"

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the receiver is not started")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> Receiver:
        app = web.Application(client_max_size=self._client_max_size)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=SHUTDOWN_BACKSTOP_SECONDS)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._port_wanted)
            await site.start()
            # The site's bound address (port 0 asked for any free one).
            addresses = runner.addresses
            assert addresses, "the site bound no socket"
            self.port = int(addresses[0][1])
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        return self

    async def close(self) -> None:
        """Stop: wake every waiting handler first (a hanging or slow one drops its
        connection), then shut the server down. Idempotent."""
        self._closing.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._notify()

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        await self.close()
        if self.harness_errors:
            message = "the receiver harness failed (a bug in tests/delivery/receivers.py or a behaviour):\n" + \
                "\n".join(self.harness_errors)
            if exc is None:
                raise AssertionError(message)
            exc.add_note(message)

    # ----------------------------------------------------------------- reading the record

    def ids(self) -> list[str | None]:
        """The webhook-id of every request, in arrival order."""
        return [a.webhook_id for a in self.arrivals]

    def verified_ids(self) -> list[str | None]:
        """The webhook-id of every request that verified, in arrival order (repeats kept)."""
        return [a.webhook_id for a in self.arrivals if a.verified]

    def unverified(self) -> list[Arrival]:
        """The requests that failed verification."""
        return [a for a in self.arrivals if not a.verified]

    def statuses(self) -> list[int | None]:
        return [a.status for a in self.arrivals]

    def by_id(self, webhook_id: str) -> list[Arrival]:
        return [a for a in self.arrivals if a.webhook_id == webhook_id]

    async def until(self, predicate: Callable[[list[Arrival]], T], timeout: float = 30.0,
                    what: str | None = None) -> T:
        """``predicate(arrivals)``'s first truthy answer, checked at once and again
        on every arrival and every settled answer (no polling, no guessed sleep).
        AssertionError after ``timeout`` seconds, and at once on a harness error."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._raise_harness_errors()
            answer = predicate(self.arrivals)
            if answer:
                return answer
            changed = self._changed  # taken with no await since the check: no wake-up is lost
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what or getattr(predicate, '__name__', 'a condition')}"
                    f" at {self.url}; last answer {answer!r}; arrivals: {self.summary()}")
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass  # checked once more, then reported

    async def wait_for(self, count: int, timeout: float = 30.0, *, settled: bool = False) -> list[Arrival]:
        """At least ``count`` requests arrived (``settled``: and their answers are
        settled: replied, reset or hanging); returns the arrivals so far."""
        def enough(arrivals: list[Arrival]) -> bool:
            if len(arrivals) < count:
                return False
            return not settled or all(a.answer != "pending" for a in arrivals[:count])

        await self.until(enough, timeout, what=f"{count} request(s){' answered' if settled else ''}")
        return list(self.arrivals)

    def summary(self) -> str:
        return "[" + ", ".join(
            f"#{a.order} {a.method} {a.webhook_id} verified={a.verified} {a.answer}:{a.status}" for a in self.arrivals
        ) + "]"

    # ----------------------------------------------------------------- internals

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _raise_harness_errors(self) -> None:
        if self.harness_errors:
            raise AssertionError("the receiver harness failed:\n" + "\n".join(self.harness_errors))

    async def _pause(self, seconds: float) -> bool:
        if self._closing.is_set():
            return False
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            return True
        return False

    def _verify(self, body: bytes, headers: Mapping[str, str]) -> tuple[bool, str | None]:
        problems = []
        for i, webhook in enumerate(self._webhooks):
            try:
                webhook.verify(body, dict(headers), json_parse=False)
            except UnicodeDecodeError as exc:
                problems.append(f"secret #{i}: body is not UTF-8, standardwebhooks cannot verify it ({exc})")
            except Exception as exc:  # WebhookVerificationError, or a malformed header tripping the library
                problems.append(f"secret #{i}: {type(exc).__name__}: {exc}")
        return (not problems, "; ".join(problems) or None)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
        except Exception:  # the client went away mid-body: not an arrival
            return web.Response(status=400)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request, body)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request, body: bytes) -> web.StreamResponse:
        arrival: Arrival | None = None
        try:
            arrival = self._record(request, body)
            outcome = await self.behaviour(Call(arrival, request, self))
            if isinstance(outcome, Hang):
                self._settle(arrival, "hanging", None, final=False)
                await self._closing.wait()
                self._settle(arrival, "hung", None)
                return self._drop(request, hard=False)
            if isinstance(outcome, Reset):
                self._settle(arrival, "reset", None)
                return self._drop(request, hard=outcome.hard)
            if isinstance(outcome, Reply):
                response = web.Response(status=outcome.status, headers=dict(outcome.headers), body=outcome.body)
                self._settle(arrival, "replied", outcome.status)
                return response
            raise TypeError(f"behaviour {self.behaviour!r} returned {outcome!r}, not Reply, Reset or Hang")
        except asyncio.CancelledError:
            if arrival is not None:
                self._settle(arrival, "cancelled", None)
            raise
        except Exception:
            text = traceback.format_exc()
            self.harness_errors.append(text)
            if arrival is not None:
                arrival.harness_error = text
                self._settle(arrival, "harness-error", 500)
            else:
                self._notify()
            return web.Response(status=500, text="receiver harness error\n")

    def _record(self, request: web.Request, body: bytes) -> Arrival:
        headers = request.headers
        # standardwebhooks reads one value per name: a repeated Standard Webhooks
        # header is a sender's bug, so it fails verification rather than being guessed.
        repeated = [n for n in ("webhook-id", "webhook-timestamp", "webhook-signature") if len(headers.getall(n, [])) > 1]
        error_text: str | None
        if repeated:
            verified, error_text = False, f"header(s) sent more than once: {', '.join(repeated)}"
        else:
            verified, error_text = self._verify(body, {k: v for k, v in headers.items()})
        arrival = Arrival(
            order=len(self.arrivals),
            at=time.monotonic(),
            wall=time.time(),
            method=request.method,
            path=request.path_qs,
            webhook_id=headers.get("webhook-id"),
            webhook_timestamp=headers.get("webhook-timestamp"),
            webhook_signature=headers.get("webhook-signature"),
            verified=verified,
            error=error_text,
            tenant=headers.get("X-Tenant-Id"),
            source=headers.get("X-Source"),
            idempotency_key=headers.get("Idempotency-Key"),
            content_type=headers.get("Content-Type"),
            body=body,
            headers=tuple((k, v) for k, v in headers.items()),
        )
        self.arrivals.append(arrival)
        self._notify()
        return arrival

    def _settle(self, arrival: Arrival, answer: str, status: int | None, *, final: bool = True) -> None:
        arrival.answer = answer
        arrival.status = status
        arrival.answered_at = time.monotonic()
        self._notify()
        if final and self._on_settled is not None:
            self._on_settled(arrival)

    @staticmethod
    def _drop(request: web.Request, *, hard: bool) -> web.StreamResponse:
        """Close the connection without answering. The response returned is
        never sent: aiohttp finds the transport closing and lets it go."""
        transport = request.transport
        if transport is not None:
            if hard:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        return web.Response(status=599)


def is_2xx(arrival: Arrival) -> bool:
    """The receiver answered this arrival with a 2xx."""
    return arrival.status is not None and 200 <= arrival.status < 300


def receiver(behaviour: Behaviour, *, secret: str | Sequence[str], **options: Any) -> Receiver:
    """``async with receiver(ok(), secret="whsec_...") as r:`` (see Receiver)."""
    return Receiver(behaviour, secret=secret, **options)


# --------------------------------------------------------------------------- a process of its own

BEHAVIOURS = ("ok", "error", "fails-then-ok", "slow", "hang", "gone", "too-many", "unavailable", "redirect", "reset")


def behaviour_from_args(args: argparse.Namespace) -> Behaviour:
    name = args.behaviour
    if name == "ok":
        return ok(args.status or 200)
    if name == "error":
        return error(args.status or 500)
    if name == "fails-then-ok":
        return fails_then(args.times, failure=error(args.status or 500), per=args.per)
    if name == "slow":
        return slow(args.delay)
    if name == "hang":
        return hang()
    if name == "gone":
        return gone()
    if name == "too-many":
        return too_many_requests(args.retry_after)
    if name == "unavailable":
        return unavailable(args.retry_after)
    if name == "redirect":
        if not args.location:
            raise SystemExit("--behaviour redirect needs --location")
        return redirect(args.location)
    if name == "reset":
        return reset()
    raise SystemExit(f"unknown behaviour {name!r}")  # argparse's choices make this unreachable


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.delivery.receivers",
        description="A real Standard Webhooks receiver: prints its port as the first line of stdout, "
                    "then serves until SIGTERM or SIGINT.")
    parser.add_argument("--behaviour", choices=BEHAVIOURS, default="ok")
    parser.add_argument("--secret", action="append", required=True,
                        help="whsec_ secret; repeat it for rotation (each must verify)")
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--path", default="/hook")
    parser.add_argument("--status", type=int, default=None, help="ok: the 2xx; error, fails-then-ok: the failure")
    parser.add_argument("--times", type=int, default=1, help="fails-then-ok: failures before the 2xx")
    parser.add_argument("--per", choices=("overall", "webhook-id"), default="overall")
    parser.add_argument("--delay", type=float, default=1.0, help="slow: seconds before answering")
    parser.add_argument("--retry-after", default=None, help="too-many, unavailable: the Retry-After value")
    parser.add_argument("--location", default=None, help="redirect: where to")
    parser.add_argument("--arrivals", default=None,
                        help="file: one JSON line per request (Arrival.to_json()), written when its answer is settled")
    return parser.parse_args(None if argv is None else list(argv))


async def serve(args: argparse.Namespace, log: TextIO | None) -> int:
    def write(arrival: Arrival) -> None:
        if log is not None:
            log.write(json.dumps(arrival.to_json(), separators=(",", ":")) + "\n")
            log.flush()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    r = Receiver(behaviour_from_args(args), secret=args.secret, host=args.host, port=args.port,
                 path=args.path, on_settled=write)
    async with r:
        print(r.port, flush=True)
        print(f"receiving at {r.url} ({args.behaviour})", file=sys.stderr, flush=True)
        await stop.wait()
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    if args.arrivals is None:
        return asyncio.run(serve(args, None))
    with open(args.arrivals, "a", encoding="utf-8") as log:
        return asyncio.run(serve(args, log))


if __name__ == "__main__":
    sys.exit(main())
