"""A batch of events in one signed request (POST /pos/{source}/ingest/batch):
what an in-house system or a POS terminal sends after being offline.

The whole body is signed once with the source's generic X-Signature scheme;
then it is split into items, each deduplicated on its own key. An item that
is not a JSON object, or has no usable key, is invalid and fails alone.

What is stored for each item:

* NDJSON (``application/x-ndjson``): the exact bytes of its line.
* a JSON array: the item re-serialized compactly (orjson). A JSON parser
  does not give the item's byte span, and no item carries a signature of
  its own (the request's covers the whole array), so the exact bytes would
  let nobody verify anything more; compact and deterministic, the same item
  sent again is a duplicate, not a conflict.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from codex_ingest.errors import IngestError, InvalidJSON
from codex_ingest.events import IncomingEvent
from codex_ingest.intake.checks import IDEMPOTENCY_KEY_PATTERN

NDJSON = "application/x-ndjson"


class EmptyBatch(IngestError):
    """The batch holds no events."""

    code = "empty_batch"


class TooManyItems(IngestError):
    """The batch holds more events than BATCH_MAX_ITEMS."""

    status = 413
    code = "too_many_items"


@dataclass(frozen=True, slots=True)
class InvalidItem:
    """An item that cannot be stored: why, in the error body's words."""

    error: str
    detail: str


def split(body: bytes, media_type: str, max_items: int) -> list[bytes | object]:
    """The batch's items, in order: each NDJSON line's bytes, or each array element (parsed)."""
    if media_type == NDJSON:
        items: list[bytes | object] = [line for line in body.split(b"\n") if line.strip()]
    else:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidJSON(f"the body is not valid UTF-8 JSON: {exc.msg}") from None
        if not isinstance(document, list):
            raise InvalidJSON("a batch is a JSON array of events (or NDJSON, one event per line)")
        items = document
    if not items:
        raise EmptyBatch()
    if len(items) > max_items:
        raise TooManyItems(f"the batch holds {len(items)} events; the limit is {max_items}")
    return items


def to_event(item: bytes | object, *, tenant: str, source: str, content_type: str | None) -> IncomingEvent | InvalidItem:
    """One item as an event to store, or why it is invalid."""
    if isinstance(item, bytes):  # an NDJSON line, stored as it came
        raw = item.rstrip(b"\r")
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return InvalidItem("invalid_json", f"the line is not valid UTF-8 JSON: {exc.msg}")
    else:
        document = item
        raw = b""
    if not isinstance(document, dict):
        return InvalidItem("invalid_json", "each event must be a JSON object")
    if not raw:
        raw = orjson.dumps(document)
    digest = hashlib.sha256(raw).digest()
    key = _key(document, digest)
    if key is None:
        return InvalidItem("invalid_idempotency_key", "event_id (or id) must be 1-255 printable ASCII characters, or an integer")
    return IncomingEvent(tenant, source, key, raw, digest, content_type)


def _key(document: dict[str, object], digest: bytes) -> str | None:
    """The item's own key: event_id, else id (a string or an integer), else the SHA-256 of its bytes."""
    for field in ("event_id", "id"):
        if field not in document:
            continue
        value = document[field]
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            value = str(value)
        if isinstance(value, str) and IDEMPOTENCY_KEY_PATTERN.fullmatch(value):
            return value
        return None
    return digest.hex()
