"""The JSON check (intake.checks.check_json) passes exactly the bodies that
``orjson.loads`` accepts as an object or an array: it validates with simdjson
for speed, and the contract must not move by a byte. Each body here is judged
by both and the verdicts compared."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codex_ingest.errors import InvalidJSON
from codex_ingest.intake.checks import check_json
from tests.intake.test_properties import json_documents, json_values


def orjson_verdict(body: bytes) -> bool:
    try:
        return isinstance(orjson.loads(body), (dict, list))
    except orjson.JSONDecodeError:
        return False


def verdict(body: bytes) -> bool:
    try:
        check_json(body)
    except InvalidJSON:
        return False
    return True


def nested(depth: int, opener: bytes, closer: bytes, inner: bytes = b"1") -> bytes:
    return opener * depth + inner + closer * depth


EDGES = [
    b"{}", b"[]", b" {}\n", b"{} ", b"", b"  ", b"\xef\xbb\xbf{}", b"{}\x00", b'"x"', b"1", b"null", b"true",
    b"[18446744073709551615]", b"[18446744073709551616]", b"[-9223372036854775808]", b"[-9223372036854775809]",
    b"[123456789012345678901234567890]", b"[1e308]", b"[1.7976931348623157e309]", b"[1E400]", b"[-1e999]", b"[1e-999]",
    b"[-0]", b"[01]", b"[1.]", b"[.5]", b"[+1]", b"[0x10]", b"[NaN]", b"[Infinity]", b"[-Infinity]",
    b'["\\ud800\\udc00"]', b'["\\udc00\\ud800"]', b'["\\ud800"]', b'["\\udc00"]', b'{"\\ud800":1}', b'["\\u0000"]',
    b'["\\x41"]', b'["\\u00e9"]', b'["\\uD83D\\uDE00"]', b'["\\u12"]',
    b'["\x00"]', b'["\x1f"]', b'["\x7f"]', b'["\t"]', b"[\t\n\r ]", b"[\x0c]", b"[\xa0]",
    b'{"a":"\xff"}', b'{"a":"\xc0\xaf"}', b'{"a":"\xed\xa0\x80"}', b'["\xf4\x90\x80\x80"]', b'["\xf0\x9f\x98\x80"]',
    b'["\xe2\x82"]', b'{"\xff":1}',
    b"[1,2", b"[1,]", b'{"a":1,}', b'{"a" 1}', b"{1:2}", b"{'a':1}", b'{"a":1}{"b":2}', b"[1] x", b"[1]]",
    b'{"a":1,"a":2}', b"[true,false,null]", b"[tru]", b"[nul]", b"[True]",
    nested(1024, b"[", b"]", b""), nested(1025, b"[", b"]", b""), nested(1023, b"[", b"]", b"{}"),
    nested(1024, b"[", b"]", b"{}"), nested(1024, b'{"a":', b"}"), nested(1025, b'{"a":', b"}"),
    nested(1023, b'{"a":', b"}", b"[1]"), nested(1024, b'{"a":', b"}", b"[1]"), nested(512, b'[{"a":', b"}]"),
    nested(513, b'[{"a":', b"}]"), nested(100_000, b"[", b"]", b""), nested(100_000, b'{"a":', b"}"),
]


@pytest.mark.parametrize("body", EDGES, ids=lambda b: repr(b[:24]) + (f"..{len(b)}" if len(b) > 24 else ""))
def test_an_edge_is_judged_as_orjson_judges_it(body: bytes) -> None:
    assert verdict(body) == orjson_verdict(body)


def test_the_check_keeps_judging_after_a_refusal_and_a_scalar() -> None:
    """The parser is reused: a refused body, or a scalar, must not leave it unable to take the next."""
    for body in (b"[1,", b'"scalar"', b"{}", b"[", b"[1]", b"7", b'{"a":[1,2,{"b":null}]}'):
        assert verdict(body) == orjson_verdict(body)


@st.composite
def damaged(draw) -> bytes:
    """A valid document with a few bytes replaced, inserted or removed: near misses."""
    body = bytearray(draw(json_documents))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(("replace", "insert", "delete")))
        byte = draw(st.sampled_from(b'{}[]",:\\ \x00\x80\xbf\xc0\xed\xf4\xffu0e.-+nt'))
        if action == "insert":
            body[where:where] = bytes([byte])
        elif body and where < len(body):
            if action == "replace":
                body[where] = byte
            else:
                del body[where]
    return bytes(body)


@given(body=damaged() | json_documents | json_values.map(orjson.dumps) | st.binary(max_size=256))
@settings(max_examples=3000, deadline=None)
def test_any_body_is_judged_as_orjson_judges_it(body: bytes) -> None:
    assert verdict(body) == orjson_verdict(body)


@given(depth=st.integers(1000, 1050), shape=st.sampled_from((b"[", b'{"k":', b'[{"k":')),
       inner=st.sampled_from((b"1", b"[]", b"{}", b'"s"')))
@settings(max_examples=300, deadline=None)
def test_nesting_around_the_limit_is_judged_as_orjson_judges_it(depth: int, shape: bytes, inner: bytes) -> None:
    closer = {b"[": b"]", b'{"k":': b"}", b'[{"k":': b"}]"}[shape]
    body = nested(depth, shape, closer, inner)
    assert verdict(body) == orjson_verdict(body)
