"""What an event is on its way through the service, and what storing it
came to. Intake produces ``IncomingEvent``; storage takes it and answers a
``StoreResult``; the web layer turns that into a status. Both intake and
storage import this module and neither imports the other."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    """A verified, parsed-once webhook, ready to store. ``body`` is the exact bytes received."""

    tenant_id: str
    source: str
    idempotency_key: str
    body: bytes
    body_sha256: bytes
    content_type: str | None
    # The request headers kept (intake/headers.py), a JSON object's text; None: none recorded.
    headers: str | None = None


class Outcome(enum.Enum):
    ACCEPTED = "accepted"      # new event, stored now
    DUPLICATE = "duplicate"    # same key, same body: stored before
    CONFLICT = "conflict"      # same key, different body: nothing replaced


@dataclass(frozen=True, slots=True)
class StoreResult:
    outcome: Outcome
    event_id: int
    received_at: datetime
    stored_sha256: bytes  # digest of the body stored under the key
