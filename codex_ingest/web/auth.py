"""Bearer tokens of the read API (CODEX_API_TOKENS), each scoped to tenants.

Tokens are compared as SHA-256 digests in constant time, against every
configured token with no early exit, and never logged. Webhook secrets are
not tokens: they verify signatures and are never accepted here.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from codex_ingest.errors import Forbidden, Unauthorized
from codex_ingest.settings import ReadToken

_SCHEME = "bearer "


def token_digest(token: str) -> bytes:
    """A token's SHA-256: what is compared and kept (a console session), never the token."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class ReadAuth:
    __slots__ = ("_tokens",)

    def __init__(self, tokens: Iterable[ReadToken]) -> None:
        self._tokens = [(token_digest(t.token), t.tenants) for t in tokens]

    def scope(self, authorization: str | None) -> frozenset[str] | None:
        """The tenants the request's token may read (None: every tenant); Unauthorized (401) without a known token."""
        if authorization is None or authorization[: len(_SCHEME)].lower() != _SCHEME:
            raise Unauthorized()
        matched, found = self.scope_of_digest(token_digest(authorization[len(_SCHEME):].strip()))
        if not matched:
            raise Unauthorized("the token is not one of CODEX_API_TOKENS")
        return found

    def scope_of_digest(self, given: bytes) -> tuple[bool, frozenset[str] | None]:
        """(whether a configured token has this SHA-256 digest, the tenants it may read: None, every
        tenant), compared in constant time against every token with no early exit."""
        found: frozenset[str] | None = None
        matched = False
        for digest, tenants in self._tokens:
            if hmac.compare_digest(digest, given):
                matched, found = True, tenants
        return matched, found

    def authorize(self, authorization: str | None, tenant: str) -> None:
        """Raise Unauthorized (401) or Forbidden (403) unless the token may read ``tenant``."""
        tenants = self.scope(authorization)
        if tenants is not None and tenant not in tenants:
            raise Forbidden()
