"""scheme = "clover": ``X-Clover-Auth`` equals the app's auth code (any configured one).

One POST may carry many merchants' changes::

    {"appId": "...", "merchants": {"<merchant id>": [{"objectId": "O:...", "type": "CREATE", "ts": 1700000000000}]}}

Each change is one event: tenant = the merchant id, key =
``<merchant>|<objectId>|<type>|<ts>``, so each is deduplicated on its own
however Clover groups changes into requests. Clover does not sign the body
(the auth code is a static shared value), so there is nothing a consumer
could re-verify from the whole request; what is stored for each change is
that change alone, in Clover's own shape:
``{"appId": ..., "merchants": {"<merchant id>": [<the change>]}}`` (compact
JSON), which stays the same when Clover regroups changes on a retry.

The set-up handshake, ``{"verificationCode": "..."}``, comes before the
auth code exists: it is answered 200 and logged (the operator pastes the
code into Clover's dashboard), never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

import orjson

from codex_ingest.errors import IngestError, InvalidJSON, InvalidSignature
from codex_ingest.intake.schemes.base import Delivery, Handshake, Headers, event_key, parse_object, tenant_hint

HEADER = "X-Clover-Auth"
# A handshake is tiny; anything bigger is not parsed without the auth code.
_HANDSHAKE_MAX_BYTES = 1024
_HANDSHAKE_CODE = re.compile(r"^[\x21-\x7e]{1,128}$")


class CloverScheme:
    # X-Clover-Auth is the app's auth code itself, one of our secrets: never kept.
    kept_headers = ()
    fan_out = True
    tenant_from_request = False

    def __init__(self, secrets: Sequence[str]) -> None:
        # Digests of the codes: compare_digest then compares equal lengths,
        # so not even a code's length leaks.
        self._codes = [hashlib.sha256(s.encode("utf-8")).digest() for s in secrets]

    def _authentic(self, headers: Headers) -> bool:
        given = headers.get(HEADER)
        if given is None:
            return False
        digest = hashlib.sha256(given.strip().encode("utf-8", "surrogateescape")).digest()
        matched = False
        for code in self._codes:
            matched |= hmac.compare_digest(digest, code)
        return matched

    def read(self, headers: Headers, body: bytes) -> list[Delivery] | Handshake:
        if not self._authentic(headers):
            handshake = _handshake(body) if len(body) <= _HANDSHAKE_MAX_BYTES else None
            if handshake is not None:
                return handshake
            if headers.get(HEADER) is None:
                raise InvalidSignature(f"{HEADER} header is missing")
            raise InvalidSignature(f"{HEADER} does not match the app's auth code")
        document = parse_object(body)
        if "merchants" not in document and "verificationCode" in document:
            handshake = _handshake(body)
            if handshake is not None:
                return handshake
        return _changes(document)


def _handshake(body: bytes) -> Handshake | None:
    try:
        document = parse_object(body)
    except IngestError:
        return None
    code = document.get("verificationCode")
    if set(document) - {"verificationCode", "appId"} or not isinstance(code, str):
        return None
    if _HANDSHAKE_CODE.fullmatch(code) is None:
        return None
    return Handshake(code=code)


def _changes(document: dict[str, object]) -> list[Delivery]:
    merchants = document.get("merchants")
    if not isinstance(merchants, dict):
        raise InvalidJSON('a Clover notification needs "merchants": {merchant id: [changes]}')
    envelope: dict[str, object] = {"appId": document["appId"]} if "appId" in document else {}
    out = []
    for merchant, changes in merchants.items():
        tenant = tenant_hint(merchant, "the merchant id")
        if not isinstance(changes, list):
            raise InvalidJSON(f"merchants.{merchant} must be a list of changes")
        for change in changes:
            if not isinstance(change, dict):
                raise InvalidJSON(f"merchants.{merchant} must hold objects")
            object_id, kind, ts = change.get("objectId"), change.get("type"), change.get("ts")
            if not isinstance(object_id, str) or not isinstance(kind, str) or type(ts) is not int:
                raise InvalidJSON('each change needs "objectId" (string), "type" (string) and "ts" (integer)')
            key = event_key(f"{merchant}|{object_id}|{kind}|{ts}", "merchant|objectId|type|ts")
            try:
                body = orjson.dumps({**envelope, "merchants": {merchant: [change]}})
            except TypeError:  # orjson writes at most 254 levels; it reads 1024
                raise InvalidJSON("a change is nested too deeply to be stored (at most 251 levels)") from None
            out.append(Delivery(key=key, tenant=tenant, body=body))
    if not out:
        raise InvalidJSON("the notification carries no changes")
    return out
