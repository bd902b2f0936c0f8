"""What the database says, translated once, by one rule, for every path
(one event, a batch, the readiness probe):

* **4xx** (``EventRejected``) only when the event's own values are refused:
  SQLSTATE class 22 (data exception), or a value the driver cannot encode.
* **503 with Retry-After** (``DatabaseUnavailable``) for every state of the
  server that can pass: no connection or a timeout, and the classes 08
  (connection), 25 (read-only: a demoted primary, a standby during a
  failover), 40 (serialization, deadlock), 53 (disk, memory, connections),
  55 (locks), 57 (shutdown, cancel), 58 (I/O) and XX (internal). Also for
  the misconfigurations an operator must fix (42501 permission denied,
  42P01 undefined table: migrations not applied, 26000 a prepared statement
  a transaction pooler lost), logged as one error line:
  the sender's retry succeeds once the operator has acted. A 4xx would tell
  a provider its event is bad, and many stop retrying.
* **500** for anything else: a bug, left to surface with its traceback.

Every error is counted in ``codex_ingest_db_errors_total{class}``; each class
named here (``ERROR_CLASSES``) is exported at 0 from start-up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import asyncpg
from asyncpg.exceptions._base import DataError as ClientDataError

from codex_ingest.errors import DatabaseUnavailable, EventRejected, IngestError

log = logging.getLogger("codex_ingest.store")

# SQLSTATE classes that describe the server's state, not our statement.
_SERVER_STATE_CLASSES = frozenset({"08", "25", "40", "53", "55", "57", "58", "XX"})
# Misconfigurations an operator fixes without the sender resending anything else.
_OPERATOR_STATES = {
    "42501": "the service's role lacks a privilege on the events table (grant it)",
    "42P01": "the events table does not exist (apply the migrations: codex-ingest migrate apply)",
    "26000": "a prepared statement vanished: behind PgBouncer in transaction mode, set DB_STATEMENT_CACHE_SIZE=0",
}
READ_ONLY = "25006"
# SQLSTATE class 22: the event's own values are refused (a 4xx).
_ROW_FAULT_CLASS = "22"

# error_class's labels for failures that carry no SQLSTATE.
CONNECTION = "connection"
TIMEOUT = "timeout"
CLIENT_DATA = "client_data"
# Every class the rule above names: the label values codex_ingest_db_errors_total
# starts with, at 0, so a dashboard shows 0 and a rate() sees the first error.
# (A bug's error is still counted under its own class when it happens.)
ERROR_CLASSES: tuple[str, ...] = tuple(sorted(
    {_ROW_FAULT_CLASS, *_SERVER_STATE_CLASSES, *(state[:2] for state in _OPERATOR_STATES),
     CONNECTION, TIMEOUT, CLIENT_DATA}
))

_UNREACHABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    # Every host answers and none is writable: a switchover between the
    # primary's demotion and the standby's promotion.
    asyncpg.exceptions.TargetServerAttributeNotMatched,
)

ErrorCounter = Callable[[str], None]


def sqlstate(exc: BaseException) -> str:
    return getattr(exc, "sqlstate", None) or ""


def error_class(exc: BaseException) -> str:
    """The label an error is counted under: its SQLSTATE class, else what kind of failure it was."""
    state = sqlstate(exc)
    if state:
        return state[:2]
    if isinstance(exc, ClientDataError):
        return CLIENT_DATA
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return TIMEOUT
    return CONNECTION


def is_row_fault(exc: BaseException) -> bool:
    """A value of the event's own that the driver cannot encode or the server refuses (class 22)."""
    # The driver's own DataError subclasses InterfaceError: checked before anything else.
    return isinstance(exc, (ClientDataError, asyncpg.DataError)) or sqlstate(exc)[:2] == _ROW_FAULT_CLASS


def is_server_state(exc: BaseException) -> bool:
    """The database cannot take the statement now, or until an operator acts: 503."""
    if is_row_fault(exc):
        return False
    if isinstance(exc, _UNREACHABLE):
        return True
    state = sqlstate(exc)
    return state[:2] in _SERVER_STATE_CLASSES or state in _OPERATOR_STATES


def must_discard(exc: BaseException) -> bool:
    """The connection that said this must not be reused: a read-only server
    (a demoted primary, a standby) stays read-only, and a fresh connection
    may reach the new primary (target_session_attrs=read-write)."""
    return sqlstate(exc) == READ_ONLY


def translate(exc: BaseException, retry_after: int) -> IngestError | None:
    """The IngestError a driver error stands for; None for a bug (a 500)."""
    if is_row_fault(exc):
        return EventRejected()
    if not is_server_state(exc):
        return None
    state = sqlstate(exc)
    if state in _OPERATOR_STATES:
        log.error("the database refused the write; an operator must act",
                  extra={"sqlstate": state, "cause": _OPERATOR_STATES[state]})
    return DatabaseUnavailable(retry_after=retry_after)


def describe(exc: BaseException) -> str:
    # Class and SQLSTATE only: driver messages can quote parameter values.
    return f"{exc.__class__.__name__} {sqlstate(exc)}".strip()


@contextmanager
def translated(retry_after: int, count: ErrorCounter | None = None) -> Iterator[None]:
    """Count driver errors and re-raise them as the IngestError they stand
    for; a bug's error is re-raised as it is."""
    try:
        yield
    except IngestError:
        raise
    except Exception as exc:
        if count is not None and isinstance(exc, (asyncpg.PostgresError, *_UNREACHABLE)):
            count(error_class(exc))
        translated_error = translate(exc, retry_after)
        if translated_error is None:
            raise
        raise translated_error from exc
