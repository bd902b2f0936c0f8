"""Driver errors translated once into DatabaseUnavailable.

Anything that means "the database cannot take this now" (no connection, a
server shutting down or out of resources, a timeout) becomes a 503 the
client can retry. Other PostgreSQL errors are bugs and are left to surface
as 500s with their traceback in the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
from asyncpg.exceptions._base import DataError as ClientDataError

from codex_ingest.errors import DatabaseUnavailable

# SQLSTATE classes that describe the server's state, not our statement:
# 08 connection exception, 40 transaction rollback (serialization, deadlock),
# 53 insufficient resources, 55 object not in prerequisite state (lock not
# available), 57 operator intervention (shutdown, cancel), 58 system error.
_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "55", "57", "58"})

_UNREACHABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (ClientDataError, asyncpg.DataError)):
        # A value the driver cannot encode, or one the server refuses (class
        # 22): the row's fault, not the server's. The driver's own DataError
        # subclasses InterfaceError, hence this check first.
        return False
    if isinstance(exc, _UNREACHABLE):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return sqlstate[:2] in _TRANSIENT_CLASSES
    return False


@contextmanager
def unavailable_on_failure(retry_after: int) -> Iterator[None]:
    """Re-raise transient driver errors as DatabaseUnavailable."""
    try:
        yield
    except Exception as exc:
        if is_transient(exc):
            raise DatabaseUnavailable(retry_after=retry_after) from exc
        raise
