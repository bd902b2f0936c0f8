"""Console sessions: a read token given once at sign-in, a cookie after.

The cookie carries 32 random bytes (URL-safe base64); the database keeps
their SHA-256 and the token's SHA-256, never either in the clear. Each
request looks the token's scope up in the running configuration again
(web/auth.py), so a token taken out of CODEX_API_TOKENS ends its sessions.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import asyncpg

from codex_ingest.storage.queries import Queries
from codex_ingest.web.auth import ReadAuth, token_digest

COOKIE = "codex_console"
LIFETIME_SECONDS = 8 * 3600
# A cookie value this service gives is 43 characters; anything much longer is not one.
_COOKIE_MAX_CHARS = 64


@dataclass(frozen=True, slots=True)
class Operator:
    """Who a signed-in request is: the tenants its token may read (None: every tenant), and a name
    for the audit log (the first 12 hex digits of the token's SHA-256)."""

    tenants: frozenset[str] | None
    name: str


class Sessions:
    def __init__(self, queries: Queries, auth: ReadAuth) -> None:
        self._sql = {name: queries.sql(name) for name in (
            "console_create_session", "console_find_session", "console_end_session", "console_purge_sessions")}
        self._auth = auth

    async def sign_in(self, conn: asyncpg.Connection, token: str) -> str | None:
        """A new session's cookie value for ``token``, or None when it is not a read token."""
        digest = token_digest(token)
        matched, _ = self._auth.scope_of_digest(digest)
        if not matched:
            return None
        session = secrets.token_urlsafe(32)
        async with conn.transaction():
            await conn.execute(self._sql["console_purge_sessions"])
            # $1 session digest, $2 token digest, $3 lifetime
            await conn.execute(self._sql["console_create_session"], _digest(session), digest, LIFETIME_SECONDS)
        return session

    async def operator(self, conn: asyncpg.Connection, cookie: str | None) -> Operator | None:
        """Who holds this cookie, or None: no cookie, an unknown or expired one, or a token no longer
        configured."""
        if not cookie or len(cookie) > _COOKIE_MAX_CHARS or not cookie.isascii():
            return None
        row = await conn.fetchrow(self._sql["console_find_session"], _digest(cookie))  # $1 session digest
        if row is None:
            return None
        digest = bytes(row["token_sha256"])
        matched, tenants = self._auth.scope_of_digest(digest)
        return Operator(tenants, digest.hex()[:12]) if matched else None

    async def sign_out(self, conn: asyncpg.Connection, cookie: str | None) -> None:
        if cookie and len(cookie) <= _COOKIE_MAX_CHARS and cookie.isascii():
            await conn.execute(self._sql["console_end_session"], _digest(cookie))  # $1 session digest


def _digest(session: str) -> bytes:
    return hashlib.sha256(session.encode("ascii")).digest()
