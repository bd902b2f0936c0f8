"""The headers of one delivery attempt: Standard Webhooks signing, and what
of the stored request is forwarded.

Signing (https://www.standardwebhooks.com): ``webhook-id`` is ``evt_<event
id>``, ``webhook-timestamp`` the attempt's unix seconds, and
``webhook-signature`` a space-separated list of ``v1,<base64>``, one per
secret of the destination (rotation: the receiver accepts any), each
HMAC-SHA256 over ``"{id}.{timestamp}." + body``. A destination's
``whsec_`` secrets are decoded once, by ``Signer``.

The service's own headers: ``Content-Type`` (the stored content type, else
``application/octet-stream``), ``X-Tenant-Id``, ``X-Source`` and
``Idempotency-Key`` (the stored key).

Forwarding rule: every stored header (the provider's topic, event id,
signature and the names a source lists: providers.md, "Stored headers") is
sent under its own lower-case name, EXCEPT

- ``webhook-*``, and the names set above (``content-type``,
  ``x-tenant-id``, ``x-source``, ``idempotency-key``) and ``user-agent``
  (the client names itself): ours win, nothing stored can replace or
  spoof them. A standard-webhooks source's own ``webhook-signature`` is
  thus never forwarded: ours replaces it;
- what frames or routes the message rather than describing the event:
  ``host``, ``content-length``, ``content-encoding`` (the stored bytes are
  sent as they are), ``transfer-encoding``, ``expect``, the hop-by-hop
  headers (``connection``, ``keep-alive``, ``te``, ``trailer``,
  ``upgrade``, ``proxy-*``), ``via``, ``forwarded``, ``x-forwarded-*``;
- credentials (``authorization``, ``cookie``, ``set-cookie``), never
  stored in the first place;
- a name that is not an HTTP token, and a value holding a control
  character (CR, LF, NUL, DEL, any other C0 or C1 one; a tab is allowed)
  or a lone surrogate: such a header is dropped, never sent, and nothing
  raises. Values are sent with surrounding blanks stripped. A name stored
  twice in different cases is sent once, the first.

Stored values are text this service kept; they are never trusted as
header syntax. Our own values (tenant, source, key: checked at ingest)
go through the same check: one that fails it is left out rather than
sent broken.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping, Sequence

from codex_ingest.intake.schemes.standard_webhooks import decode_secret
from codex_ingest.intake.signatures import HmacKeys

DEFAULT_CONTENT_TYPE = "application/octet-stream"

# Set by us; a stored header of one of these names is never forwarded.
_OURS = frozenset({"content-type", "x-tenant-id", "x-source", "idempotency-key", "user-agent"})
# Framing, routing, hop-by-hop (RFC 9110 7.6.1) and credentials.
_NOT_FORWARDED = frozenset({
    "host", "content-length", "content-encoding", "transfer-encoding", "expect",
    "connection", "keep-alive", "te", "trailer", "upgrade", "via", "forwarded",
    "authorization", "cookie", "set-cookie",
})
_NOT_FORWARDED_PREFIXES = ("webhook-", "proxy-", "x-forwarded-")

# An HTTP field name (RFC 9110 token).
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
# C0 controls but HTAB, DEL, C1 controls, and surrogates (no UTF-8 form).
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")


def webhook_id(event_id: int) -> str:
    """The ``webhook-id`` of an event.

    Derived from the event id alone, never from the attempt, the time, the
    destination or the replica: the receiver deduplicates on it, so every
    retry, every replay and a resend by another replica after a crash
    (at-least-once) must carry the same id, and no two events the same one.
    """
    return f"evt_{int(event_id)}"


def clean_value(value: object) -> str | None:
    """``value`` as a header value, or None when it cannot be sent as one."""
    if not isinstance(value, str) or _BAD_VALUE.search(value):
        return None
    return value.strip(" \t")


def forwarded(stored_headers: Mapping[str, str] | None) -> dict[str, str]:
    """The stored headers that are forwarded, by lower-case name (the module's rule)."""
    out: dict[str, str] = {}
    if not stored_headers:
        return out
    try:
        items = list(stored_headers.items())
    except (AttributeError, TypeError):  # not a mapping after all: forward nothing
        return out
    for name, value in items:
        if not isinstance(name, str) or _TOKEN.fullmatch(name) is None:
            continue
        lowered = name.lower()
        if lowered in _OURS or lowered in _NOT_FORWARDED or lowered.startswith(_NOT_FORWARDED_PREFIXES):
            continue
        if lowered in out:
            continue
        text = clean_value(value)
        if text is not None:
            out[lowered] = text
    return out


class Signer:
    """A destination's signing keys, decoded once from its ``whsec_`` secrets
    (ValueError, naming no value, for one that is not ``whsec_<base64>``)."""

    __slots__ = ("_keys",)

    def __init__(self, secrets: Iterable[str]) -> None:
        self._keys = HmacKeys(decode_secret(s) for s in secrets)

    def signature_header(self, msg_id: str, timestamp: int, body: bytes) -> str:
        return _signature_header(self._keys, msg_id, timestamp, body)

    def headers(
        self,
        *,
        event_id: int,
        tenant_id: str,
        source: str,
        idempotency_key: str,
        content_type: str | None,
        stored_headers: Mapping[str, str] | None,
        body: bytes,
        now: int,
    ) -> dict[str, str]:
        return _headers(
            self._keys,
            event_id=event_id,
            tenant_id=tenant_id,
            source=source,
            idempotency_key=idempotency_key,
            content_type=content_type,
            stored_headers=stored_headers,
            body=body,
            now=now,
        )


def delivery_headers(
    *,
    event_id: int,
    tenant_id: str,
    source: str,
    idempotency_key: str,
    content_type: str | None,
    stored_headers: Mapping[str, str] | None,
    body: bytes,
    keys: Sequence[bytes],
    now: int,
) -> dict[str, str]:
    """Every header of one attempt to deliver an event, signed with each of ``keys`` (raw HMAC keys)."""
    return _headers(
        HmacKeys(keys),
        event_id=event_id,
        tenant_id=tenant_id,
        source=source,
        idempotency_key=idempotency_key,
        content_type=content_type,
        stored_headers=stored_headers,
        body=body,
        now=now,
    )


def _signature_header(keys: HmacKeys, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{int(timestamp)}.".encode("ascii")
    return " ".join("v1," + base64.b64encode(mac).decode("ascii") for mac in keys.digests(signed, body))


def _headers(
    keys: HmacKeys,
    *,
    event_id: int,
    tenant_id: str,
    source: str,
    idempotency_key: str,
    content_type: str | None,
    stored_headers: Mapping[str, str] | None,
    body: bytes,
    now: int,
) -> dict[str, str]:
    msg_id = webhook_id(event_id)
    timestamp = int(now)
    out = forwarded(stored_headers)
    out["Content-Type"] = clean_value(content_type) or DEFAULT_CONTENT_TYPE
    for name, value in (("X-Tenant-Id", tenant_id), ("X-Source", source), ("Idempotency-Key", idempotency_key)):
        text = clean_value(value)
        if text:
            out[name] = text
    out["webhook-id"] = msg_id
    out["webhook-timestamp"] = str(timestamp)
    out["webhook-signature"] = _signature_header(keys, msg_id, timestamp, body)
    return out
