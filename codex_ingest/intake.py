"""Turns an HTTP request into a verified IncomingEvent, or raises the
IngestError that says why not. Order matters: everything that can be judged
from the headers is judged before the body is read, and the signature is
checked before the body is parsed."""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass

import orjson
from aiohttp import web

from codex_ingest.errors import (
    InvalidIdempotencyKey,
    InvalidJSON,
    InvalidSource,
    InvalidTenant,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedContentEncoding,
    UnsupportedMediaType,
)
from codex_ingest.ratelimit import RateLimiter
from codex_ingest.signatures import HmacSha256Verifier

SOURCE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[\x20-\x7e]{1,255}$")


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    """A verified, parsed-once webhook, ready to store. ``body`` is the exact bytes received."""

    tenant_id: str
    source: str
    idempotency_key: str
    body: bytes
    body_sha256: bytes
    content_type: str | None


def check_source(source: str) -> str:
    if SOURCE_PATTERN.fullmatch(source) is None:
        raise InvalidSource()
    return source


def requested_tenant(request: web.Request) -> str | None:
    """X-Tenant-Id, else ?tenant=, validated; None when neither is sent."""
    tenant = request.headers.get("X-Tenant-Id")
    if tenant is None:
        tenant = request.query.get("tenant")
    if tenant is not None and TENANT_PATTERN.fullmatch(tenant) is None:
        raise InvalidTenant()
    return tenant


def resolve_tenant(request: web.Request) -> str:
    tenant = requested_tenant(request)
    if tenant is None:
        raise InvalidTenant("X-Tenant-Id header (or ?tenant=) is required")
    return tenant


def check_idempotency_key(header: str | None) -> str | None:
    """The client's Idempotency-Key, validated; None when absent."""
    if header is None:
        return None
    if IDEMPOTENCY_KEY_PATTERN.fullmatch(header) is None:
        raise InvalidIdempotencyKey()
    return header


def check_content_type(request: web.Request) -> str | None:
    """The declared media type; absent is taken as JSON, anything not JSON is 415."""
    if "Content-Type" not in request.headers:
        return None
    media_type = request.content_type
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise UnsupportedMediaType()
    return request.headers["Content-Type"]


def check_content_encoding(request: web.Request) -> None:
    """Compressed bodies are refused (415): no decompression bomb, and the
    signature is over the bytes received. The app also turns off aiohttp's
    own request decompression (app.py), so nothing is inflated meanwhile."""
    encoding = request.headers.get("Content-Encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        raise UnsupportedContentEncoding()
    transfer = request.headers.get("Transfer-Encoding")
    if transfer is not None and transfer.strip().lower() != "chunked":
        raise UnsupportedContentEncoding("Transfer-Encoding may only be chunked: compressed bodies are not accepted")


async def read_body(request: web.Request, max_bytes: int, timeout: float | None = None) -> bytes:
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {max_bytes}")
    try:
        # client_max_size on the Application enforces the same limit while
        # reading, which also covers chunked bodies with no Content-Length.
        content = request.content
        if content.is_eof():
            # Usually the whole body came with the headers: no timer needed.
            if declared is not None:
                # Its size is known and within the limit: take the buffered
                # bytes as they are, without request.read()'s copying loop.
                return content.read_nowait()
            return await request.read()
        if timeout is None:
            return await request.read()
        async with asyncio.timeout(timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"the body is larger than the limit of {max_bytes} bytes") from None
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout:g} s") from None


def check_json(body: bytes) -> None:
    """Raise InvalidJSON unless the body is UTF-8 JSON holding an object or an array."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the body is not valid UTF-8 JSON: {exc.msg}") from None
    if not isinstance(document, (dict, list)):
        raise InvalidJSON("the body must be a JSON object or array")


async def read_event(
    request: web.Request,
    verifier: HmacSha256Verifier,
    max_body_bytes: int,
    body_timeout: float | None = None,
    limiter: RateLimiter | None = None,
) -> IncomingEvent:
    source = check_source(request.match_info["source"])
    tenant = resolve_tenant(request)
    if limiter is not None:  # before the body is read: a refused request costs no read
        limiter.check(tenant, source)
    content_type = check_content_type(request)
    check_content_encoding(request)
    client_key = check_idempotency_key(request.headers.get("Idempotency-Key"))
    body = await read_body(request, max_body_bytes, body_timeout)
    signature = request.headers.get("X-Signature")
    if signature is None:
        signature = request.headers.get("X-Webhook-Signature")
    verifier.verify(body, signature)
    check_json(body)
    digest = hashlib.sha256(body).digest()
    return IncomingEvent(
        tenant_id=tenant,
        source=source,
        idempotency_key=client_key if client_key is not None else digest.hex(),
        body=body,
        body_sha256=digest,
        content_type=content_type,
    )
