"""A batch of events in one signed request (POST /pos/{source}/ingest/batch):
what an in-house system or a POS terminal sends after being offline.

The whole body is signed once with the source's generic X-Signature scheme;
then it is split into items, each deduplicated on its own key. An item that
is not a JSON object, is larger than one event may be (MAX_BODY_BYTES), or
has no usable key, is invalid and fails alone.

A body no larger than one event may be (MAX_BODY_BYTES) is parsed whole,
as a single event's is: it costs what one event costs, and no item in it can
be over the limit. A larger one is not: its items are counted before any is
built, and a body of more than BATCH_MAX_ITEMS is refused (413) having found
the bounds of only the first BATCH_MAX_ITEMS + 1 (an 8 MiB body holds
millions of ``{}``); each item is then parsed on its own, from its own
bytes, so what is in memory at once is one item's objects, not the whole
array's. NDJSON lines are counted the same way, whatever the body's size.

What is stored for each item:

* NDJSON (``application/x-ndjson``): the exact bytes of its line.
* a JSON array: the item re-serialized compactly (orjson). No item carries
  a signature of its own (the request's covers the whole array), so its
  exact bytes would let nobody verify anything more; compact and
  deterministic, the same item sent again is a duplicate, not a conflict.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

import orjson

from codex_ingest.errors import IngestError, InvalidJSON, PayloadTooLarge
from codex_ingest.events import IncomingEvent
from codex_ingest.intake.checks import IDEMPOTENCY_KEY_PATTERN

NDJSON = "application/x-ndjson"
T = TypeVar("T")
# How deep an array item may nest, the item itself being level 1: as deep as
# orjson can write it back (it is stored re-serialized, and orjson.dumps stops
# at 254 levels), and what the one regular expression that finds items
# (below) can count to. orjson reads up to 1024 levels; NDJSON lines, stored
# as sent, may nest that deep.
MAX_ITEM_DEPTH = 254


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


# --- finding the items without building them ---------------------------------------

# A line holding anything but ASCII whitespace (what bytes.strip() removes).
_NDJSON_LINE = re.compile(rb"^[ \t\r\x0b\x0c]*+[^ \t\r\x0b\x0c\n][^\n]*+", re.MULTILINE)

_WS = rb"[ \t\n\r]*+"  # JSON's whitespace
_STRING = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'


def _container(depth: int) -> bytes:
    """An array or object nested at most ``depth`` levels, brackets balanced,
    strings skipped whole. Nothing else is checked: orjson parses each item."""
    flat = rb'[^\[\]{}"]++|' + _STRING
    pattern = rb"[\[{](?:" + flat + rb")*+[\]}]"
    for _ in range(depth - 1):
        pattern = rb"[\[{](?:" + flat + rb"|" + pattern + rb")*+[\]}]"
    return pattern


_ARRAY_START = re.compile(_WS + rb"\[" + _WS)
_EMPTY_ARRAY = re.compile(_WS + rb"\[" + _WS + rb"\]" + _WS)
# One item (a string, a container or a bare number or literal), then the comma or bracket after it.
_ITEM = re.compile(rb"(" + _STRING + rb"|" + _container(MAX_ITEM_DEPTH) + rb'|[^\[\]{}",\s]++)' + _WS + rb"([,\]])" + _WS)
_CLOSE = ord("]")


def _ndjson_lines(body: bytes) -> Iterator[bytes]:
    for match in _NDJSON_LINE.finditer(body):
        yield match.group()


def _array_items(body: bytes) -> Iterator[memoryview]:
    """Each array item's bytes, in order; InvalidJSON when the body is not an array of them."""
    if _EMPTY_ARRAY.fullmatch(body):
        return
    start = _ARRAY_START.match(body)
    if start is None:
        raise InvalidJSON("a batch is a JSON array of events (or NDJSON, one event per line)")
    view = memoryview(body)
    pos = start.end()
    while True:
        item = _ITEM.match(body, pos)
        if item is None:
            raise InvalidJSON(f"the body is not a JSON array of events: no item at byte {pos}"
                              f" (not JSON, or nested deeper than {MAX_ITEM_DEPTH} levels)")
        yield view[item.start(1):item.end(1)]
        pos = item.end()
        if body[item.start(2)] == _CLOSE:
            break
    if pos != len(body):
        raise InvalidJSON(f"the body is not a JSON array of events: bytes after its end, at byte {pos}")


def read_items(body: bytes, media_type: str, *, tenant: str, source: str, content_type: str | None, headers: str | None,
               max_items: int, max_item_bytes: int) -> list[IncomingEvent | InvalidItem]:
    """The batch's items, in order, each an event to store or why it is invalid.

    TooManyItems past ``max_items``, found before any item is parsed;
    EmptyBatch for none; InvalidJSON when the body is not a batch at all
    (an array item that is not JSON makes the whole array invalid)."""
    if media_type == NDJSON:
        lines = _first(_ndjson_lines(body), max_items)
        return [_line_event(line, tenant=tenant, source=source, content_type=content_type, headers=headers, max_bytes=max_item_bytes)
                for line in lines]
    if len(body) <= max_item_bytes:
        # No bigger than one event may be: parsed whole, as one event's body is (the
        # faster road, for what most batches are), no item can be over the limit as sent.
        documents = _first(iter(_whole_array(body)), max_items)
        return [_object_event(document, tenant=tenant, source=source, content_type=content_type, headers=headers, max_bytes=max_item_bytes)
                for document in documents]
    items = _first(_array_items(body), max_items)
    return [_array_event(item, tenant=tenant, source=source, content_type=content_type, headers=headers, max_bytes=max_item_bytes)
            for item in items]


def _whole_array(body: bytes) -> list[object]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the body is not valid UTF-8 JSON: {exc.msg}") from None
    if not isinstance(document, list):
        raise InvalidJSON("a batch is a JSON array of events (or NDJSON, one event per line)")
    return document


def _first(found: Iterator[T], max_items: int) -> list[T]:
    """The items found, refused when there are none or more than ``max_items``. One more than
    the limit is asked for: when there are fewer, the whole body has been read (and checked)."""
    items = list(islice(found, max_items + 1))
    if not items:
        raise EmptyBatch()
    if len(items) > max_items:
        raise TooManyItems(f"the batch holds more than {max_items} events, the limit")
    return items


def _line_event(line: bytes, *, tenant: str, source: str, content_type: str | None, headers: str | None,
                max_bytes: int) -> IncomingEvent | InvalidItem:
    """An NDJSON line as an event to store (its exact bytes), or why it is invalid."""
    raw = line.rstrip(b"\r")
    if len(raw) > max_bytes:
        return _too_large(max_bytes)  # not parsed, as a single event over MAX_BODY_BYTES is not read
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return InvalidItem("invalid_json", f"the line is not valid UTF-8 JSON: {exc.msg}")
    if not isinstance(document, dict):
        return _NOT_AN_OBJECT
    return _event(document, raw, tenant=tenant, source=source, content_type=content_type, headers=headers)


def _array_event(item: memoryview, *, tenant: str, source: str, content_type: str | None, headers: str | None,
                 max_bytes: int) -> IncomingEvent | InvalidItem:
    """An array item as an event to store (compact JSON), or why it is invalid; InvalidJSON
    for the whole request when it is not JSON, since the array then is not either."""
    if len(item) > max_bytes:
        return _too_large(max_bytes)
    try:
        document = orjson.loads(item)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the body is not valid UTF-8 JSON: {exc.msg}") from None
    return _object_event(document, tenant=tenant, source=source, content_type=content_type, headers=headers, max_bytes=max_bytes)


def _object_event(document: object, *, tenant: str, source: str, content_type: str | None, headers: str | None,
                  max_bytes: int) -> IncomingEvent | InvalidItem:
    """A parsed array item as an event to store, its bytes compact JSON."""
    try:
        # Every item, object or not: the depth limit is the same whichever road it came by.
        raw = orjson.dumps(document)
    except TypeError:  # deeper than orjson writes; only an item parsed with the whole body gets here
        raise InvalidJSON(f"an item nests deeper than {MAX_ITEM_DEPTH} levels, more than can be stored") from None
    if not isinstance(document, dict):
        return _NOT_AN_OBJECT
    if len(raw) > max_bytes:  # compact, yet longer: 1e9 is stored as 1000000000.0
        return _too_large(max_bytes)
    return _event(document, raw, tenant=tenant, source=source, content_type=content_type, headers=headers)


def _event(document: dict[str, object], raw: bytes, *, tenant: str, source: str,
           content_type: str | None, headers: str | None) -> IncomingEvent | InvalidItem:
    digest = hashlib.sha256(raw).digest()
    key = _key(document, digest)
    if key is None:
        return _NO_KEY
    return IncomingEvent(tenant, source, key, raw, digest, content_type, headers)


_NOT_AN_OBJECT = InvalidItem("invalid_json", "each event must be a JSON object")
_NO_KEY = InvalidItem("invalid_idempotency_key", "event_id (or id) must be 1-255 printable ASCII characters, or an integer")


def _too_large(max_bytes: int) -> InvalidItem:
    return InvalidItem(PayloadTooLarge.code, f"the event is larger than the limit of {max_bytes} bytes (MAX_BODY_BYTES)")


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
