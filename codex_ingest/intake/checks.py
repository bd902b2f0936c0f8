"""The checks every webhook passes whatever its scheme: the names in its
URL and headers, its media type and encoding, and whether its body is JSON.
Each raises the IngestError that says why not; none needs the app or the
request object, only header and body values."""

from __future__ import annotations

import re
from collections.abc import Mapping

import orjson
import simdjson

from codex_ingest.errors import (
    InvalidIdempotencyKey,
    InvalidJSON,
    InvalidSource,
    InvalidTenant,
    UnsupportedContentEncoding,
    UnsupportedMediaType,
)

SOURCE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[\x20-\x7e]{1,255}$")
# application/json or application/<name>+json, the name made of RFC 9110 token characters.
_JSON_MEDIA_TYPE = re.compile(r"^application/(?:[a-z0-9!#$%&'*+.^_`|~-]+\+)?json$")
# An IANA charset name (utf-8, iso-8859-1, windows-1252, shift_jis, ...).
_CHARSET = re.compile(r"^[a-z0-9][a-z0-9._:+-]{0,39}$")

Headers = Mapping[str, str]  # case-insensitive in practice (aiohttp's CIMultiDictProxy)


def check_source(source: str) -> str:
    if SOURCE_PATTERN.fullmatch(source) is None:
        raise InvalidSource()
    return source


def requested_tenant(headers: Headers, query: Mapping[str, str]) -> str | None:
    """X-Tenant-Id, else ?tenant=, validated; None when neither is sent."""
    tenant = _named_tenant(headers, query)
    if tenant is not None and TENANT_PATTERN.fullmatch(tenant) is None:
        raise InvalidTenant()
    return tenant


def claimed_tenant(headers: Headers, query: Mapping[str, str]) -> str | None:
    """The tenant a refused request named, when it is a well-formed one, else None:
    what the console lists beside a refusal. A claim, never proof; bounded by the pattern."""
    tenant = _named_tenant(headers, query)
    return tenant if tenant is not None and TENANT_PATTERN.fullmatch(tenant) else None


def _named_tenant(headers: Headers, query: Mapping[str, str]) -> str | None:
    tenant = headers.get("X-Tenant-Id")
    return query.get("tenant") if tenant is None else tenant


def check_idempotency_key(header: str | None) -> str | None:
    """The client's Idempotency-Key, validated; None when absent."""
    if header is None:
        return None
    if IDEMPOTENCY_KEY_PATTERN.fullmatch(header) is None:
        raise InvalidIdempotencyKey()
    return header


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type value, lower case; absent is taken as JSON."""
    if content_type is None:
        return "application/json"
    return content_type.partition(";")[0].strip().lower()


def check_content_type(headers: Headers, also: frozenset[str] = frozenset()) -> str | None:
    """The declared Content-Type as it is stored: its media type and charset
    only, lower case (``application/json; charset=utf-8``); None when absent
    (taken as JSON). A media type that is neither JSON (``application/json``,
    ``application/<name>+json``) nor one of ``also`` is 415.

    Nothing else of the header is kept: its other parameters are the
    sender's free text, and a reader of the stored event must not get it
    back as if the service had vouched for it."""
    declared = headers.get("Content-Type")
    if declared is None:
        return None
    kind, *parameters = declared.split(";")
    kind = kind.strip().lower()
    if kind not in also and _JSON_MEDIA_TYPE.fullmatch(kind) is None:
        raise UnsupportedMediaType("Content-Type must be application/json" + "".join(f" or {m}" for m in sorted(also)))
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
            # A name that is no charset's is dropped: the body is UTF-8 JSON whatever it says.
            if _CHARSET.fullmatch(charset) is not None:
                return f"{kind}; charset={charset}"
    return kind


def check_content_encoding(headers: Headers) -> None:
    """Compressed bodies are refused (415): no decompression bomb, and the
    signature is over the bytes received. The app also turns off aiohttp's
    own request decompression (web/app.py), so nothing is inflated meanwhile."""
    encoding = headers.get("Content-Encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        raise UnsupportedContentEncoding()
    transfer = headers.get("Transfer-Encoding")
    if transfer is not None and transfer.strip().lower() != "chunked":
        raise UnsupportedContentEncoding("Transfer-Encoding may only be chunked: compressed bodies are not accepted")


# Validates without building Python objects (simdjson parses into its own buffer): about a
# sixth of orjson.loads's time on a provider's 2-3 KB body. One parser per worker, reused.
_VALIDATOR = simdjson.Parser()
_BOM = b"\xef\xbb\xbf"


def check_json(body: bytes) -> None:
    """Raise InvalidJSON unless the body is UTF-8 JSON holding an object or an array.

    What passes is exactly what ``orjson.loads`` accepts (the contract, and what
    tests/intake/test_json_check.py holds it to): simdjson answers for the body
    it accepts, except a leading byte-order mark, which orjson refuses. Anything
    simdjson refuses (rare: a body that is not JSON, integers past 64 bits and
    objects nested past its depth, which orjson takes) is judged by orjson."""
    if not body.startswith(_BOM):
        try:
            document = _VALIDATOR.parse(body)
        except Exception:  # whatever simdjson refuses, and however: orjson judges below
            pass
        else:
            is_container = isinstance(document, (simdjson.Object, simdjson.Array))
            del document  # the parser can take the next body only once its document is gone
            if is_container:
                return
            raise InvalidJSON("the body must be a JSON object or array")
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the body is not valid UTF-8 JSON: {exc.msg}") from None
    if not isinstance(decoded, (dict, list)):
        raise InvalidJSON("the body must be a JSON object or array")
