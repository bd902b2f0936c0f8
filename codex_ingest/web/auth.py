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


class ReadAuth:
    __slots__ = ("_tokens",)

    def __init__(self, tokens: Iterable[ReadToken]) -> None:
        self._tokens = [(hashlib.sha256(t.token.encode()).digest(), t.tenants) for t in tokens]

    def scope(self, authorization: str | None) -> frozenset[str] | None:
        """The tenants the request's token may read (None: every tenant); Unauthorized (401) without a known token."""
        if authorization is None or authorization[: len(_SCHEME)].lower() != _SCHEME:
            raise Unauthorized()
        given = hashlib.sha256(authorization[len(_SCHEME):].strip().encode("utf-8", "surrogateescape")).digest()
        found: frozenset[str] | None = None
        matched = False
        for digest, tenants in self._tokens:
            if hmac.compare_digest(digest, given):
                matched, found = True, tenants
        if not matched:
            raise Unauthorized("the token is not one of CODEX_API_TOKENS")
        return found

    def authorize(self, authorization: str | None, tenant: str) -> None:
        """Raise Unauthorized (401) or Forbidden (403) unless the token may read ``tenant``."""
        tenants = self.scope(authorization)
        if tenants is not None and tenant not in tenants:
            raise Forbidden()
