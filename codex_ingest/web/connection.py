"""The HTTP connection: deadlines for request heads and for clients that do
not read their answers, HTTP/1.0 and 1.1 only, bodies refused before they
are invited, and parse errors as JSON.

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

aiohttp writes a response into the transport and waits, without limit,
for a client that never reads it: its bytes, and the requests pipelined
behind it, stay in the worker for as long as the client keeps the
connection open. Here the transport's high-water mark is 0, so the
protocol is paused exactly while part of a response waits in user space;
if it is still waiting ``WRITE_TIMEOUT`` seconds later, the connection is
aborted and what it held is freed. (aiohttp itself stops reading once 32
pipelined requests wait.)

llhttp takes a request line without a version as HTTP/0.9, and parses
``HTTP/2.0``; aiohttp would answer both in kind. Here only HTTP/1.0 and 1.1
are served: a request without a version is 400 and any other version 505,
answered as HTTP/1.1 and closed without reading its body. Before the app
runs, a request with ``Expect`` or a large declared body meets
web/body.py's ``refuse_unwanted_body``: a route that takes no body never
invites one with ``100 Continue``.

An answer that says ``Connection: close`` (a 408, a refused body) closes
the connection once it is flushed, without reading the rest of the body
(aiohttp would linger reading it for up to 10 s).

``ServiceRunner`` wires this in; the server and the tests that need real
connections use it instead of ``web.AppRunner``.

aiohttp offers no hook for the deadlines or the parse errors, so this
subclasses its RequestHandler and reads three of its private attributes
(``_request_count``, ``_messages``, ``_loop``); tests/web/test_hostile_input.py,
tests/web/test_slow_clients.py and tests/web/test_attack_memory.py fail if an
aiohttp upgrade changes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import Any

import orjson
from aiohttp import hdrs, web
from aiohttp.abc import AbstractRouter
from aiohttp.http import HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.http_exceptions import LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from codex_ingest.web.appkeys import SETTINGS
from codex_ingest.web.body import NO_BODY_LIMIT, refusal, refuse_unwanted_body
from codex_ingest.web.every_request import REQUEST_ID_HEADER, request_id
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


# SO_LINGER on, for 0 s: closing the socket resets the connection and drops what the kernel still holds.
_RESET = struct.pack("ii", 1, 0)

# The version a request line without one was given (llhttp's HTTP/0.9), or
# one not spoken here, kept while the request is answered as HTTP/1.1.
_UNSPOKEN = web.RequestKey("unspoken_http_version", tuple)


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection protocol with head and write deadlines and JSON parse errors."""

    def __init__(self, manager: web.Server, *, header_timeout: float, write_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = False  # some bytes of the pending head have arrived
        self._in_request = False  # a head was parsed and its response is not finished
        self._write_timeout = write_timeout
        self._write_timer: asyncio.TimerHandle | None = None
        # aiohttp drops its own reference when it closes the transport, which
        # then waits to flush: the write deadline must still reach it.
        self._socket: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._socket = transport  # type: ignore[assignment]
        # Paused (pause_writing) exactly while any byte waits in user space.
        self._socket.set_write_buffer_limits(high=0)
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
        # Read before aiohttp adds its own Connection header: the handler's
        # answer itself says close (a 408, a body refused unread).
        closing = resp.status >= 400 and resp.headers.get(hdrs.CONNECTION) == "close"
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            if not self._messages:
                self._in_request = False
            if closing:
                # The client is too slow to send its body, or was told not to
                # send it at all: do not linger reading it, close once the
                # answer is flushed.
                self.force_close()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self._loop.call_later(self._write_timeout, self._write_deadline)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._socket = None
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

    def _write_deadline(self) -> None:
        self._write_timer = None
        if self._socket is None:
            return
        log.debug("write deadline passed; connection aborted",
                  extra={"unsent_bytes": self._socket.get_write_buffer_size()})
        # Reset, not closed: a close would wait for the client to read what is
        # left, first in this process, then in the kernel's send buffer.
        sock = self._socket.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        self._socket.abort()


class GuardedServer(web.Server):
    """aiohttp's Server, building GuardedRequestHandler connections, with
    requests checked for their HTTP version and unwanted bodies before the app."""

    def __init__(self, base: web.Server, *, header_timeout: float, write_timeout: float, router: AbstractRouter) -> None:
        self._app_handler = base.request_handler
        self._app_request = base.request_factory
        self._router = router
        super().__init__(
            self._guard,
            request_factory=self._request,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self.header_timeout = header_timeout
        self.write_timeout = write_timeout

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, header_timeout=self.header_timeout,
                                     write_timeout=self.write_timeout, **self._kwargs)

    def _request(self, message: RawRequestMessage, payload: StreamReader, protocol: RequestHandler,
                 writer: Any, task: asyncio.Task[None]) -> BaseRequest:
        version = message.version
        if version == HttpVersion11 or version == HttpVersion10:
            return self._app_request(message, payload, protocol, writer, task)
        # Answered as HTTP/1.1, whatever the request line said, and closed.
        request = self._app_request(message._replace(version=HttpVersion11, should_close=True),
                                    payload, protocol, writer, task)
        request[_UNSPOKEN] = version
        return request

    async def _guard(self, request: BaseRequest) -> web.StreamResponse:
        refused: web.Response | None = None
        unspoken = request.get(_UNSPOKEN)
        if unspoken is not None:
            log.debug("HTTP version refused", extra={"version": f"{unspoken[0]}.{unspoken[1]}"})
            if unspoken == (0, 9):  # llhttp's reading of a request line without a version
                refused = refusal(400, "bad_request", "the request line must end with HTTP/1.1 or HTTP/1.0")
            else:
                refused = refusal(505, "http_version_not_supported", "this server speaks HTTP/1.1 and HTTP/1.0 only")
        elif hdrs.EXPECT in request.headers or (request.content_length or 0) > NO_BODY_LIMIT:
            refused = await refuse_unwanted_body(request, self._router)
        if refused is None:
            return await self._app_handler(request)
        # Answered before the app: its handlers' wrapper and on_response_prepare do not run.
        refused.headers.update(RESPONSE_HEADERS)
        refused.headers[REQUEST_ID_HEADER] = request_id(request)
        return refused


class ServiceRunner(web.AppRunner):
    """web.AppRunner with the service's connection deadlines from the app's settings."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        settings = app[SETTINGS]
        kwargs.setdefault("keepalive_timeout", settings.keepalive_timeout)
        super().__init__(app, **kwargs)
        self._header_timeout = settings.header_read_timeout
        self._write_timeout = settings.write_timeout

    async def _make_server(self) -> web.Server:
        return GuardedServer(await super()._make_server(), header_timeout=self._header_timeout,
                             write_timeout=self._write_timeout, router=self.app.router)
