"""HTTP/1.1 over a bare socket, for requests no well-behaved client will send:
lying Content-Length, broken chunking, raw bytes in headers, slow trickles.
Also a test server that runs the app the way ``serve`` does (ServiceRunner)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner

from codex_ingest.web.connection import ServiceRunner
from tests.helpers import sign

Header = tuple[str | bytes, str | bytes]


class ServiceTestServer(TestServer):
    """aiohttp's TestServer, but with the service's own connection handling."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return ServiceRunner(self.app, **kwargs)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    extra: bytes = field(default=b"")  # whatever followed the first response

    def json(self) -> Any:
        return orjson.loads(self.body)


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def build(
    method: str = "POST",
    path: str = "/pos/square/ingest",
    body: bytes = b"",
    headers: list[Header] | None = None,
    *,
    tenant: str | bytes | None = "tenant-1",
    signature: str | bytes | None = "auto",
    content_type: str | bytes | None = "application/json",
    content_length: int | str | None = "auto",
) -> bytes:
    """A request's bytes. Defaults: a valid signed ingest of ``body``; pass
    None to leave a header out, or a value to replace it."""
    lines: list[Header] = [("Host", "127.0.0.1")]
    if content_type is not None:
        lines.append(("Content-Type", content_type))
    if tenant is not None:
        lines.append(("X-Tenant-Id", tenant))
    if signature == "auto":
        signature = sign(body)
    if signature is not None:
        lines.append(("X-Signature", signature))
    if content_length == "auto":
        content_length = len(body)
    if content_length is not None:
        lines.append(("Content-Length", str(content_length)))
    lines += headers or []
    head = _b(f"{method} {path} HTTP/1.1\r\n")
    head += b"".join(_b(name) + b": " + _b(value) + b"\r\n" for name, value in lines)
    return head + b"\r\n" + body


def chunked(body: bytes, size: int = 512) -> bytes:
    out = b""
    for i in range(0, len(body), size):
        part = body[i : i + size]
        out += b"%x\r\n" % len(part) + part + b"\r\n"
    return out + b"0\r\n\r\n"


async def read_response(reader: asyncio.StreamReader) -> RawResponse | None:
    """One response; None if the server closed the connection without answering."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except ConnectionResetError:
        return None
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return RawResponse(int(status_line.split(" ")[1]), headers, body)


async def exchange(
    host: str, port: int, data: bytes | list[bytes], *, pause: float = 0.0, timeout: float = 10.0
) -> RawResponse | None:
    """Send ``data`` (pieces ``pause`` seconds apart) and read the first answer."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        async with asyncio.timeout(timeout):
            try:
                for i, piece in enumerate([data] if isinstance(data, bytes) else data):
                    if i and pause:
                        await asyncio.sleep(pause)
                    writer.write(piece)
                    await writer.drain()
            except ConnectionError:
                pass  # answered (and closed) before we finished sending: read the answer
            return await read_response(reader)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


def exchange_sync(host: str, port: int, data: bytes, *, timeout: float = 10.0) -> RawResponse | None:
    """``exchange`` for synchronous tests (hypothesis against a live server)."""
    import socket

    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except ConnectionError:
            pass
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            try:
                chunk = sock.recv(65536)
            except ConnectionError:
                return None
            if not chunk:
                return None
            buffer += chunk
        head, _, rest = buffer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return RawResponse(int(status_line.split(" ")[1]), headers, rest[:length])
