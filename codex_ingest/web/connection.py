"""The HTTP connection: a deadline for request heads, and parse errors as JSON.

aiohttp waits for a request's line and headers for as long as the client
likes: a client that opens a connection and trickles a header byte now and
then (slowloris) holds a connection and its buffers indefinitely. Here each
connection gets ``HEADER_READ_TIMEOUT`` seconds from opening, or from the
first byte of its next request, to deliver a complete head; otherwise it is
answered 408 (if it sent anything) and closed. The body has its own
deadline, ``BODY_READ_TIMEOUT``, enforced where it is read (web/body.py:
408); a 408 closes the connection. Idle keep-alive connections are closed
after ``KEEPALIVE_TIMEOUT`` by aiohttp itself.

aiohttp answers a request it cannot parse (header too large, too many
headers, bad framing) with a text/plain 400 and logs an ERROR with a
traceback: noise any client can cause. Here it is a JSON 4xx (431 for
oversized heads) and a debug line without client data.

``ServiceRunner`` wires this in; the server and the tests that need real
connections use it instead of ``web.AppRunner``.

aiohttp offers no hook for either, so this subclasses its RequestHandler
and reads three of its private attributes (``_request_count``,
``_messages``, ``_loop``); tests/web/test_hostile_input.py and
tests/web/test_slow_clients.py fail if an aiohttp upgrade changes them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from codex_ingest.web.appkeys import SETTINGS
from codex_ingest.web.responses import RESPONSE_HEADERS, error_response

log = logging.getLogger("codex_ingest.connection")

_HEAD_TIMEOUT_BODY = orjson.dumps(
    {"error": "request_timeout", "detail": "the request line and headers did not arrive in time"}
)
_HEAD_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Content-Type: application/json\r\n"
    + "".join(f"{name}: {value}\r\n" for name, value in RESPONSE_HEADERS.items()).encode()
    + b"Connection: close\r\n"
    b"Content-Length: " + str(len(_HEAD_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _HEAD_TIMEOUT_BODY
)


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection protocol with a head deadline and JSON parse errors."""

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = False  # some bytes of the pending head have arrived
        self._in_request = False  # a head was parsed and its response is not finished

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._in_request or not data:
            super().data_received(data)
            return
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            # A complete head: the body's deadline is the handler's business.
            self._in_request = True
            self._head_bytes = False
            self._disarm()
        else:
            self._head_bytes = True
            if self._head_timer is None:
                self._arm()

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            if not self._messages:
                self._in_request = False
            if resp.status == 408 or (resp.status == 413 and request.headers.get("Expect", "").lower() == "100-continue"):
                # The client is too slow to send its body, or was told not to
                # send it at all: do not linger reading it, close once the
                # answer is flushed.
                self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500 or exc is None:
            return super().handle_error(request, status, exc, message)
        # A request aiohttp could not parse: the client's fault, not ours.
        too_large = isinstance(exc, LineTooLong) or "Too many headers" in str(exc)
        log.debug("unparsable request", extra={"reason": type(exc).__name__, "status": 431 if too_large else status})
        if too_large:
            resp = error_response(
                431, "request_header_fields_too_large", "the request line or headers are too large or too many"
            )
        else:
            resp = error_response(status, "bad_request", "the request is not valid HTTP/1.1")
        resp.headers.update(RESPONSE_HEADERS)  # no app here: its on_response_prepare does not run
        resp.force_close()
        return resp

    def _arm(self) -> None:
        self._head_timer = self._loop.call_later(self._header_timeout, self._head_deadline)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline(self) -> None:
        self._head_timer = None
        if self._in_request or self.transport is None:
            return
        log.debug("request head deadline passed", extra={"partial": self._head_bytes})
        if self._head_bytes:
            self.transport.write(_HEAD_TIMEOUT_RESPONSE)
        self.force_close()  # closes the transport once the 408 is flushed


class GuardedServer(web.Server):
    """aiohttp's Server, building GuardedRequestHandler connections."""

    def __init__(self, base: web.Server, *, header_timeout: float) -> None:
        super().__init__(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self.header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, header_timeout=self.header_timeout, **self._kwargs)


class ServiceRunner(web.AppRunner):
    """web.AppRunner with the service's connection deadlines from the app's settings."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        settings = app[SETTINGS]
        kwargs.setdefault("keepalive_timeout", settings.keepalive_timeout)
        super().__init__(app, **kwargs)
        self._header_timeout = settings.header_read_timeout

    async def _make_server(self) -> web.Server:
        return GuardedServer(await super()._make_server(), header_timeout=self._header_timeout)
