"""Operating push delivery: each destination's state and backlog, its
attempt log, replaying events, retrying parked ones, enabling and
disabling. Shared by the HTTP routes (web/destinations.py) and the
``codex-ingest destinations`` command (cli/destinations.py); both check
their input here, so they refuse the same things the same way (the
IngestError the web answers with, and the command prints).

Every statement is in sql/delivery_admin.sql, except replay_since and
retry_parked (sql/delivery.sql). The engine reads a destination's state on
every claim (sql/delivery.sql claim_parallel, claim_ordered): a state
changed here takes effect at its next claim, in every worker and replica;
requests already sent finish and are recorded.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from codex_ingest.delivery.config import ALL, DestinationSpec
from codex_ingest.errors import InvalidJSON, InvalidParameter, InvalidTenant, UnknownDestination
from codex_ingest.intake.checks import TENANT_PATTERN
from codex_ingest.settings import parse_ascii_int
from codex_ingest.storage.delivery import unwrap_cursor
from codex_ingest.storage.queries import Queries

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Attempt ids are bigint: "below this" from the newest.
_BIGINT_MAX = 2**63 - 1
# The attempt log's cursor: the last attempt id shown, behind a mark of its own
# (a cursor of GET /events is refused here, and this one there).
_CURSOR_MARK = "att:"
_CURSOR_TEXT = re.compile(r"att:([0-9]{1,19})")
_CURSOR_MAX_CHARS = 40
# Outcomes ``status=`` may name; otherwise an HTTP status, 100-599.
OUTCOMES = ("delivered", "failed")
# RFC 3339's date-time (section 5.6): an offset is required; ASCII digits only
# (a regex's \d would take other scripts' digits). Lower-case t and z are allowed
# by RFC 3339, and a space for T by its note, as datetime.fromisoformat reads them.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_ISO_NO_OFFSET = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?)?")
REPLAY_KEYS = ("since", "tenant")
OPERATOR_REASON = "disabled by an operator"


# -- input ---------------------------------------------------------------------------------


def parse_limit(text: str | None) -> int:
    """``limit``: 1-1000 in the digits 0-9, default 100; 400 ``invalid_limit`` otherwise."""
    if text is None:
        return DEFAULT_LIMIT
    try:
        limit = parse_ascii_int(text, max_digits=4)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidParameter("invalid_limit", f"limit must be a whole number from 1 to {MAX_LIMIT} (digits 0-9)")
    return limit


@dataclass(frozen=True, slots=True)
class StatusFilter:
    """``status=``: ``delivered`` (a 2xx), ``failed`` (anything else: another status, or no
    answer), or one HTTP status (``500``); None for both fields: every attempt."""

    outcome: str | None = None
    status: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> StatusFilter:
        if text is None:
            return cls()
        if text in OUTCOMES:
            return cls(outcome=text)
        try:
            status = parse_ascii_int(text, max_digits=3)
        except ValueError:
            status = 0
        if not 100 <= status <= 599:
            raise InvalidParameter(
                "invalid_status", "status must be delivered (a 2xx), failed (anything else, no answer included) "
                "or an HTTP status from 100 to 599 (digits 0-9)")
        return cls(status=status)


def parse_tenant(value: object, where: str = "tenant") -> str | None:
    """An optional tenant name; 400 ``invalid_tenant`` for anything but one."""
    if value is None:
        return None
    if not isinstance(value, str) or TENANT_PATTERN.fullmatch(value) is None:
        raise InvalidTenant(f"{where} must match ^[A-Za-z0-9][A-Za-z0-9._:-]{{0,127}}$ (leave it out: every tenant)")
    return value


def encode_cursor(attempt_id: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_MARK}{attempt_id}".encode()).decode("ascii").rstrip("=")


def decode_cursor(text: str | None) -> int:
    """The attempt id a ``next_cursor`` names (the page goes on below it); from the
    newest without one. 400 ``invalid_cursor`` for anything this service did not give."""
    if text is None:
        return _BIGINT_MAX
    match = _CURSOR_TEXT.fullmatch(unwrap_cursor(text, _CURSOR_MAX_CHARS))
    if match is not None:
        attempt_id = int(match.group(1))
        if attempt_id <= _BIGINT_MAX:
            return attempt_id
    raise InvalidParameter("invalid_cursor", "after must be a next_cursor of this destination's attempt log")


def parse_time(text: object, field: str = "since", *, offset_required: bool = True) -> datetime:
    """An RFC 3339 date-time with its offset (``2026-11-25T08:00:00Z``), as an aware
    datetime in UTC; 400 ``invalid_since`` otherwise. ``offset_required`` False
    (the command line, as ``export --since``): ISO 8601 without an offset is UTC."""
    shape = isinstance(text, str) and (
        _RFC3339.fullmatch(text) is not None
        or (not offset_required and _ISO_NO_OFFSET.fullmatch(text) is not None))
    if shape:
        assert isinstance(text, str)
        try:
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment.astimezone(UTC)  # OverflowError: before year 1 or after 9999 once in UTC
        except (ValueError, OverflowError):
            pass
    example = "2026-11-25T08:00:00Z"
    raise InvalidParameter(
        f"invalid_{field}",
        f"{field} must be an RFC 3339 time with its offset, such as {example}"
        if offset_required else f"{field} must be an ISO 8601 time, such as {example} (UTC when no offset is given)")


def parse_replay(document: object) -> tuple[datetime, str | None]:
    """The body of a replay: ``{"since": "<RFC 3339>", "tenant": "<tenant>" (optional)}``."""
    if not isinstance(document, dict):
        raise InvalidJSON('the body must be a JSON object: {"since": "<RFC 3339 time>", "tenant": "<optional>"}')
    unknown = sorted(set(document) - set(REPLAY_KEYS))
    if unknown:
        raise InvalidJSON(f"unknown key(s) {', '.join(repr(k)[:40] for k in unknown[:3])}: "
                          f"a replay takes since and, optionally, tenant")
    if "since" not in document:
        raise InvalidParameter("invalid_since", "since is required: an RFC 3339 time, such as 2026-11-25T08:00:00Z")
    return parse_time(document["since"]), parse_tenant(document.get("tenant"))


# -- output --------------------------------------------------------------------------------


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def status_document(spec: DestinationSpec, row: asyncpg.Record) -> dict[str, Any]:
    """One destination as GET /destinations shows it."""
    oldest = row["oldest_pending_at"]
    lag_seconds = 0.0 if oldest is None else max(0.0, (row["now"] - oldest).total_seconds())
    return {
        "name": spec.name,
        "state": row["state"],
        "reason": row["reason"],
        "url_origin": spec.url_origin,  # never the path or query: they may carry a token
        "lag_events": int(row["pending"]),
        "scheduler_behind": bool(row["scheduler_behind"]),
        "lag_seconds": round(lag_seconds, 3),
        "in_flight": int(row["in_flight"]),
        "failing": int(row["failing"]),
        "parked": int(row["parked"]),
        "expired": int(row["expired"]),
        "last_success_at": _time(row["last_success_at"]),
        "last_failure_at": _time(row["last_failure_at"]),
    }


def attempt_document(row: asyncpg.Record) -> dict[str, Any]:
    """One attempt. ``response_excerpt`` is the receiver's text, untrusted: a JSON
    string like any other, escaped by the serializer, never interpreted."""
    return {
        "event_id": row["event_id"],
        "tenant_id": row["tenant_id"],
        "attempt": row["attempt"],
        "status": row["status"],
        "error": row["error"],
        "duration_ms": round(float(row["duration_ms"]), 3),
        "response_excerpt": row["response_excerpt"],
        "at": row["at"].isoformat(),
    }


# -- the operations ------------------------------------------------------------------------


class DestinationAdmin:
    """The operations on the destinations a sources file declares, each on a
    connection the caller gives (a pool's, or the command's own)."""

    def __init__(self, queries: Queries, destinations: Mapping[str, DestinationSpec]) -> None:
        self._sql = {name: queries.sql(name) for name in (
            "destination_overview", "destination_attempts", "change_destination_state", "pending_due_now",
            "replay_since", "retry_parked",
        )}
        self.destinations = destinations

    def spec(self, name: str) -> DestinationSpec:
        """The declared destination ``name``; 404 ``unknown_destination`` otherwise."""
        spec = self.destinations.get(name)
        if spec is None:
            raise UnknownDestination()
        return spec

    async def overview(self, conn: asyncpg.Connection) -> list[dict[str, Any]]:
        """Every declared destination, in the sources file's order."""
        names = list(self.destinations)
        if not names:
            return []
        rows = await conn.fetch(self._sql["destination_overview"], names)  # $1 names
        return [status_document(self.destinations[row["name"]], row) for row in rows]

    async def attempts(self, conn: asyncpg.Connection, name: str, *, status: StatusFilter, tenant: str | None,
                       limit: int, before: int) -> dict[str, Any]:
        """A page of ``name``'s attempt log below attempt id ``before``, newest first, and
        ``next_cursor`` (None: this page is the last)."""
        self.spec(name)
        rows = await conn.fetch(
            self._sql["destination_attempts"],
            name,            # $1 destination
            before,          # $2 ids below this
            status.outcome,  # $3 delivered | failed | None
            status.status,   # $4 an exact status, or None
            tenant,          # $5 tenant, or None
            limit + 1,       # $6 one more: is there another page?
        )
        page = rows[:limit]
        more = len(rows) > limit
        return {"attempts": [attempt_document(r) for r in page],
                "next_cursor": encode_cursor(page[-1]["id"]) if more else None}

    async def replay(self, conn: asyncpg.Connection, name: str, since: datetime, tenant: str | None) -> int:
        """Every event received at or after ``since`` (of ``tenant``, None: every one) that
        ``name`` takes, due again now with its original webhook-id; how many."""
        spec = self.spec(name)
        return int(await conn.fetchval(
            self._sql["replay_since"],
            name,                                                      # $1 destination
            since,                                                     # $2 since
            tenant,                                                    # $3 tenant, or None
            None if spec.sources == (ALL,) else list(spec.sources),    # $4 its sources, None: all
            None if spec.tenants == (ALL,) else list(spec.tenants),    # $5 its tenants, None: all
        ))

    async def retry(self, conn: asyncpg.Connection, name: str) -> int:
        """Every parked delivery of ``name``, due now with its attempts counted from 0; how many."""
        self.spec(name)
        return int(await conn.fetchval(self._sql["retry_parked"], name))  # $1 destination

    async def enable(self, conn: asyncpg.Connection, name: str) -> dict[str, str]:
        """Active again; its pending deliveries are due now (one transaction)."""
        self.spec(name)
        async with conn.transaction():
            state = await conn.fetchval(self._sql["change_destination_state"], name, "active", None)
            await conn.fetchval(self._sql["pending_due_now"], name)  # $1 destination
        return {"name": name, "state": state}

    async def disable(self, conn: asyncpg.Connection, name: str, reason: str = OPERATOR_REASON) -> dict[str, str]:
        """Disabled: no worker claims its deliveries until it is enabled (those in flight finish)."""
        self.spec(name)
        # $1 name, $2 state, $3 reason
        state = await conn.fetchval(self._sql["change_destination_state"], name, "disabled", reason)
        return {"name": name, "state": state}
