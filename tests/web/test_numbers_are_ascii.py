"""Every number the service reads is written in the ASCII digits 0-9.

int() and float() also read other scripts' digits ('٣', full-width '３');
str.isdigit() also says yes to '²' and '①', which int() then refuses (that
was a 500 on GET /events?limit=²). Fuzzed here with hypothesis: the read
API's limit and wait against a live ``serve``, every numeric setting, and the
helpers they share.

Not here, because nothing in the service parses them: Content-Length is
refused by aiohttp's own parser unless it is ASCII digits (llhttp, and the pure
Python parser's ``re.ASCII`` pattern), a 400 before any handler; Stripe's
``t=`` and ``webhook-timestamp`` are matched against ``[0-9]{1,12}`` before
``int()``; Toast's ISO time goes to ``datetime.fromisoformat``, which refuses
non-ASCII digits.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from urllib.parse import urlencode

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codex_ingest.settings import (
    SERVE_OPTIONS,
    ConfigError,
    Option,
    load_settings,
    parse_ascii_decimal,
    parse_ascii_int,
)
from tests.helpers import READ_TOKEN

ASCII_DIGITS = "0123456789"
# Digits of other scripts (Nd: '٣', full-width '３', ...) and other numbers (No: '²', '①', '½', ...).
other_digit = st.characters(categories=("Nd", "No")).filter(lambda c: c not in ASCII_DIGITS) | st.sampled_from(
    "０１２３４５６７８９²³¹①⑳٣۳३৩๓")
ascii_digits = st.text(st.sampled_from(ASCII_DIGITS), max_size=3)
# A number with at least one digit that is not ASCII, anywhere in it.
unicode_number = st.tuples(ascii_digits, other_digit, st.text(st.sampled_from(ASCII_DIGITS) | other_digit, max_size=3)).map(
    "".join)


def read(live, **params: str) -> tuple[int, dict]:
    query = urlencode({"tenant": "ascii-numbers", **params})
    request = urllib.request.Request(f"{live.url}/events?{query}", headers={"Authorization": f"Bearer {READ_TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


@given(text=unicode_number)
@settings(max_examples=150, deadline=None)
def test_a_limit_with_digits_other_than_ascii_is_invalid_limit(live, text: str) -> None:
    status, doc = read(live, limit=text)
    assert (status, doc.get("error")) == (400, "invalid_limit"), (text, status, doc)


@given(text=unicode_number | st.tuples(ascii_digits, st.just("."), unicode_number).map("".join))
@settings(max_examples=150, deadline=None)
def test_a_wait_with_digits_other_than_ascii_is_invalid_wait(live, text: str) -> None:
    status, doc = read(live, wait=text)
    assert (status, doc.get("error")) == (400, "invalid_wait"), (text, status, doc)


def _numeric(option: Option) -> str | None:
    """The unit a numeric setting's value ends with ('' or 's'); None for a setting that is not a number."""
    for unit in ("", "s"):
        try:
            value = option.parse("7" + unit)
        except ValueError:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return unit
    return None


NUMERIC = [(option, unit) for option in SERVE_OPTIONS if (unit := _numeric(option)) is not None]


def test_the_numeric_settings_are_found() -> None:
    names = {option.env for option, _ in NUMERIC}
    assert {"PORT", "WORKERS", "DB_POOL_MAX", "MAX_BODY_BYTES", "DB_WRITE_TIMEOUT", "RATE_LIMIT_PER_SEC",
            "RETENTION", "READ_PAGE_MAX_BYTES", "READ_MAX_WAITING"} <= names


@pytest.mark.parametrize(("option", "unit"), NUMERIC, ids=[option.env for option, _ in NUMERIC])
@given(text=unicode_number)
@settings(max_examples=60, deadline=None)
def test_a_setting_with_digits_other_than_ascii_is_refused_naming_it(option: Option, unit: str, text: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(SERVE_OPTIONS, {}, {"WEBHOOK_SECRET": "s", option.env: text + unit})
    message = str(refused.value)
    assert message.startswith(option.env) and "\n" not in message and text not in message


@pytest.mark.parametrize("value", ["36501d", "999999999999999d", "876601h"])
def test_a_retention_too_long_to_subtract_from_now_is_refused(value: str) -> None:
    # datetime.now() - timedelta(days=10**9) raises OverflowError: that was the purge, at run time.
    with pytest.raises(ConfigError, match=r"^RETENTION must be at most"):
        load_settings(SERVE_OPTIONS, {}, {"WEBHOOK_SECRET": "s", "RETENTION": value})


@given(text=st.text(max_size=24) | unicode_number | ascii_digits)
@settings(max_examples=1000, deadline=None)
def test_parse_ascii_int_takes_only_digits_0_to_9(text: str) -> None:
    try:
        value = parse_ascii_int(text)
    except ValueError:
        assert not (0 < len(text) <= 18 and all(c in ASCII_DIGITS for c in text))
        return
    assert 0 < len(text) <= 18 and all(c in ASCII_DIGITS for c in text) and value == int(text)


@given(text=st.text(max_size=24) | unicode_number | st.tuples(ascii_digits, st.sampled_from([".", ""]), ascii_digits).map("".join))
@settings(max_examples=1000, deadline=None)
def test_parse_ascii_decimal_takes_only_digits_0_to_9_and_one_point(text: str) -> None:
    plain = text.count(".") <= 1 and all(c in ASCII_DIGITS + "." for c in text) and text.rstrip(".") == text \
        and any(c in ASCII_DIGITS for c in text) and len(text) <= 18
    try:
        value = parse_ascii_decimal(text)
    except ValueError:
        assert not plain, text
        return
    assert plain and value == float(text) and value >= 0
