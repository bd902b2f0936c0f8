"""Which request headers an event keeps, stored beside its body.

A consumer needs what the provider said outside the body: Shopify names its
topic (``orders/create`` or ``orders/updated``) only in ``X-Shopify-Topic``,
and re-verifying a provider's signature later takes its signature header.
Each scheme names the headers that carry its signature, timestamp, topic
and event id (``kept_headers``); every source also keeps ``Content-Type``
and ``User-Agent``, and the names its sources-file table lists
(``headers = [...]``).

Never kept, whatever a table lists: ``Authorization``, ``Cookie``,
``Set-Cookie``, ``Proxy-*``, a scheme's header that holds the shared secret
itself (Clover's ``X-Clover-Auth``), and any header whose value carries one
of the service's secrets or tokens (a webhook secret, a read or metrics
token), whole or as one of its parts (separated by spaces, commas,
semicolons, ``=``, quotes or ``&``), or starting where a part starts (a
secret that holds a separator itself: base64 ending in ``=``). That check compares keyed digests in constant
time, every one, so its time says nothing about a secret.

Their total size is bounded (HEADERS_MAX_BYTES, names and values in UTF-8):
a request over it is not refused for that; the headers that do not fit are
left out, in the order above (a scheme's own first), and counted. A
repeated header keeps its first value, the one the scheme read.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable, Iterable

import orjson

from codex_ingest.intake.checks import Headers

# Every source keeps these, after its scheme's own.
COMMON = ("Content-Type", "User-Agent")
# Names no table may list, and no event ever keeps.
_NEVER = frozenset({"authorization", "cookie", "set-cookie"})
_NEVER_PREFIX = "proxy-"
# An HTTP field name (RFC 9110 token), bounded.
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
# The parts of a value a secret could hide in: "Bearer <t>", "t=..,v1=<s>", "a, b", 'k="<s>"', "a=1&b=<s>".
_SEPARATORS = r"\s,;=\"'&"
_PARTS = re.compile(f"[{_SEPARATORS}]+")
_PART = re.compile(f"[^{_SEPARATORS}]+")

# Why a header was left out: it would pass HEADERS_MAX_BYTES; its value
# carries a secret of ours; it is not UTF-8 text (stored JSON must be).
DROPPED_SIZE = "size"
DROPPED_SECRET = "secret"
DROPPED_ENCODING = "encoding"
DROP_REASONS = (DROPPED_SIZE, DROPPED_SECRET, DROPPED_ENCODING)

DropCounter = Callable[[str], None]


def never_kept(name: str) -> bool:
    """Whether a header of this name is never stored, whoever lists it."""
    lowered = name.lower()
    return lowered in _NEVER or lowered.startswith(_NEVER_PREFIX)


class SecretGuard:
    """Tells whether a header value carries one of the service's secrets.

    Holds keyed BLAKE2b digests of the secrets under a key drawn at start-up,
    never the secrets, and compares a value's digests with every one of them
    with hmac.compare_digest, with no early exit: equal lengths, no secret's
    length or prefix shows in the time taken.

    Most values carry no secret, and that work (a digest per part) would be
    paid on every request. So a screen comes first: Python's own string hash
    (SipHash, keyed per process at random) of each part, looked up among the
    secrets' hashes. No text is compared there, only 64-bit keyed hashes, and
    a part passes the screen only when it hashes like a secret, which in
    practice means it is one: the time a value takes says whether it carried a
    secret whole, never how much of one it matched. Past the screen the
    digests are compared as above. (A secret that holds a separator is looked
    for by length from each part's start, and skips the screen: every value is
    then digested.)
    """

    __slots__ = ("_keyed", "_known", "_spans", "_screen")

    def __init__(self, secrets: Iterable[str]) -> None:
        # A keyed state made once and copied per value: a third cheaper than keying each time.
        self._keyed = hashlib.blake2b(key=os.urandom(32), digest_size=16)
        held = [s for s in secrets if s]
        self._known = tuple(dict.fromkeys(self._digest(s) for s in held))
        # A secret with a separator in it is split with the value: it is looked for as the
        # text of its length from each part's start instead. Every such length is tried at
        # every part, whatever the value: what is compared never depends on what matched.
        self._spans = tuple(sorted({len(s) for s in held if _PARTS.search(s)}))
        self._screen = frozenset(hash(s) for s in held)

    def _digest(self, text: str) -> bytes:
        state = self._keyed.copy()
        state.update(text.encode("utf-8", "surrogateescape"))
        return state.digest()

    def carries_secret(self, value: str) -> bool:
        if not self._known:
            return False
        stripped = value.strip()
        parts = _PARTS.split(stripped)
        if not self._spans:
            screen = self._screen
            for part in parts:
                if hash(part) in screen:
                    break
            else:
                if hash(stripped) not in screen:
                    return False
        # Past the screen (or with secrets holding a separator): every candidate, every digest.
        candidates = dict.fromkeys((stripped, *parts))
        for part in _PART.finditer(stripped):
            for length in self._spans:
                candidates[stripped[part.start():part.start() + length]] = None
        found = False
        # The whole value and each part of it, once each ("application/json" is one part, itself).
        for candidate in candidates:
            if candidate:
                digest = self._digest(candidate)
                for known in self._known:
                    found |= hmac.compare_digest(digest, known)
        return found


class HeaderKeeper:
    """One source's kept headers: ``keep`` turns a request's headers into
    the JSON object stored with its events."""

    __slots__ = ("_names", "_guard", "_max_bytes", "_count_dropped")

    def __init__(self, names: Iterable[str], guard: SecretGuard, max_bytes: int,
                 count_dropped: DropCounter | None = None) -> None:
        # Lower-cased once, in order, without repeats or forbidden names.
        self._names = tuple(dict.fromkeys(n.lower() for n in names if not never_kept(n)))
        self._guard = guard
        self._max_bytes = max_bytes
        self._count_dropped = count_dropped

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def keep(self, headers: Headers) -> str:
        """The kept headers as a JSON object text, ``{"<lower-case name>": "<value>", ...}``."""
        kept: dict[str, str] = {}
        room = self._max_bytes
        for name in self._names:
            value = headers.get(name)
            if value is None:
                continue
            try:
                size = len(name) + len(value.encode("utf-8"))
            except UnicodeEncodeError:  # bytes that were not UTF-8 (aiohttp keeps them as surrogates)
                self._dropped(DROPPED_ENCODING)
                continue
            if self._guard.carries_secret(value):
                self._dropped(DROPPED_SECRET)
                continue
            if size > room:
                self._dropped(DROPPED_SIZE)
                continue
            room -= size
            kept[name] = value
        return orjson.dumps(kept).decode("utf-8")

    def _dropped(self, reason: str) -> None:
        if self._count_dropped is not None:
            self._count_dropped(reason)
