"""Domain errors. Each knows its HTTP status, its JSON error code and the
metrics outcome it counts as; ``web/every_request.py`` turns them into responses.
The docstring is the default detail sent to the client."""

from __future__ import annotations


class IngestError(Exception):
    """The request was rejected."""

    status: int = 400
    code: str = "bad_request"
    outcome: str = "rejected_input"
    headers: dict[str, str] | None = None

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or (self.__doc__ or "").strip()
        super().__init__(self.detail)


class InvalidSource(IngestError):
    """source must match ^[a-z0-9][a-z0-9_-]{0,63}$."""

    code = "invalid_source"


class UnknownSource(IngestError):
    """This source is not declared in the sources file (strict_sources = true)."""

    status = 404
    code = "unknown_source"


class InvalidTenant(IngestError):
    """X-Tenant-Id (or ?tenant=) is required and must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$."""

    code = "invalid_tenant"


class InvalidIdempotencyKey(IngestError):
    """Idempotency-Key must be 1-255 printable ASCII characters."""

    code = "invalid_idempotency_key"


class UnsupportedMediaType(IngestError):
    """Content-Type must be application/json."""

    status = 415
    code = "unsupported_media_type"


class PayloadTooLarge(IngestError):
    """The body is larger than MAX_BODY_BYTES."""

    status = 413
    code = "payload_too_large"


class InvalidJSON(IngestError):
    """The body must be UTF-8 JSON (an object or an array)."""

    code = "invalid_json"


class InvalidSignature(IngestError):
    """X-Signature is missing or does not match the body."""

    status = 401
    code = "invalid_signature"
    outcome = "rejected_signature"


class IdempotencyKeyReused(IngestError):
    """This Idempotency-Key was already used with a different body; nothing was replaced."""

    status = 422
    code = "idempotency_key_reused"
    outcome = "conflict"


class EventRejected(IngestError):
    """The database rejected this event's values; it was not stored."""

    code = "event_rejected"


class DatabaseUnavailable(IngestError):
    """The database is unavailable; the event may not have been stored. Retry later."""

    status = 503
    code = "database_unavailable"
    outcome = "unavailable"

    def __init__(self, detail: str | None = None, *, retry_after: int = 5) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


class UnsupportedContentEncoding(IngestError):
    """Content-Encoding must be absent or identity: compressed bodies are not accepted."""

    status = 415
    code = "unsupported_content_encoding"
    headers = {"Accept-Encoding": "identity"}


class RequestTimeout(IngestError):
    """The body did not arrive within BODY_READ_TIMEOUT seconds; nothing was stored."""

    status = 408
    code = "request_timeout"
    headers = {"Connection": "close"}


class RateLimited(IngestError):
    """Too many requests for this tenant and source; nothing was stored. Retry after Retry-After seconds."""

    status = 429
    code = "rate_limited"
    outcome = "rate_limited"

    def __init__(self, detail: str | None = None, *, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


class InvalidParameter(IngestError):
    """A query parameter has a value the service cannot use."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class Unauthorized(IngestError):
    """Send Authorization: Bearer <token> with a read token (CODEX_API_TOKENS)."""

    status = 401
    code = "unauthorized"
    headers = {"WWW-Authenticate": 'Bearer realm="codex-ingest"'}


class Forbidden(IngestError):
    """This token may not read this tenant's events."""

    status = 403
    code = "forbidden"


class CursorExpired(IngestError):
    """Retention deleted events after this cursor: reading on would skip them. Start again without a cursor
    (or from an export), knowing that events older than the retention window are gone."""

    status = 410
    code = "cursor_expired"


class UnknownDestination(IngestError):
    """No destination of this name is declared in the sources file ([destinations.NAME])."""

    status = 404
    code = "unknown_destination"
