"""Which request headers an event keeps (codex_ingest/intake/headers.py):
HeaderKeeper's order and priority under HEADERS_MAX_BYTES, the names never
kept, SecretGuard (a secret or token of ours, whole or as a part of a value),
values that are not UTF-8, repeated headers; and the sources file's
``headers = [...]`` key (parse_sources), whose errors are one line naming
the file, the source and the key.

Unit tests, no database: the same keepers the app builds (build_sources
gives each source's names, in order) fed aiohttp's own header mapping."""

from __future__ import annotations

import base64

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from codex_ingest.intake.headers import (
    DROPPED_ENCODING,
    DROPPED_SECRET,
    DROPPED_SIZE,
    HeaderKeeper,
    SecretGuard,
)
from codex_ingest.intake.schemes.registry import build_sources
from codex_ingest.intake.sources import SourcesError, parse_sources

SHOP_SECRET = "shop-secret-4f1e9a"
READ_TOKEN = "read-token-0123456789abcdef"
ORIGIN = "/etc/codex/sources.toml"
SOURCES = f"""
[sources.shopify]
scheme = "shopify"
secrets = ["{SHOP_SECRET}"]
headers = ["X-Request-Id", "X-Forwarded-For"]
[sources.clover]
scheme = "clover"
secrets = ["clover-auth-code"]
[sources.orders]
secrets = ["orders-secret"]
"""
SHOPIFY_OWN = ("x-shopify-hmac-sha256", "x-shopify-topic", "x-shopify-shop-domain", "x-shopify-webhook-id",
               "x-shopify-event-id", "x-shopify-api-version", "x-shopify-triggered-at")


def request_headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    """Headers as aiohttp hands them to the app: case-insensitive, repeats kept in order."""
    return CIMultiDictProxy(CIMultiDict(pairs))


class Drops(list[str]):
    """A drop counter that remembers every reason, in order."""

    def __call__(self, reason: str) -> None:
        self.append(reason)


def keeper_for(source: str, max_bytes: int = 4096, secrets: tuple[str, ...] = (SHOP_SECRET, READ_TOKEN),
               toml: str = SOURCES) -> tuple[HeaderKeeper, Drops]:
    """The keeper the app builds for a declared source, and its drops."""
    names = build_sources(parse_sources(toml, {}), webhook_secret="w").kept_headers[source]
    drops = Drops()
    return HeaderKeeper(names, SecretGuard(secrets), max_bytes, drops), drops


def kept(keeper: HeaderKeeper, headers: CIMultiDictProxy[str]) -> dict[str, str]:
    text = keeper.keep(headers)
    document = orjson.loads(text)
    assert isinstance(document, dict), text
    return document


def size(name: str, value: str) -> int:
    """What one header costs of HEADERS_MAX_BYTES: its name and value in UTF-8."""
    return len(name.encode()) + len(value.encode())


SHOPIFY_REQUEST = (
    ("X-Shopify-Hmac-Sha256", "q8cTq0bsrZ0vHlzXW2m2oY5Gm1H2xV2b2mLx3rH7dEk="),
    ("X-Shopify-Topic", "orders/paid"),
    ("X-Shopify-Shop-Domain", "cafe-lumen.myshopify.com"),
    ("X-Shopify-Webhook-Id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"),
    ("X-Shopify-Event-Id", "98880550-7158-44d4-b7cd-2c97c8a091b5"),
    ("X-Shopify-API-Version", "2026-10"),
    ("X-Shopify-Triggered-At", "2026-11-22T16:41:09.713Z"),
)


# --- what is kept, and how it is written -------------------------------------------------------


def test_a_scheme_keeps_its_own_then_the_common_then_the_tables_names_lower_cased_values_as_sent() -> None:
    keeper, drops = keeper_for("shopify")
    assert keeper.names == (*SHOPIFY_OWN, "content-type", "user-agent", "x-request-id", "x-forwarded-for")
    headers = request_headers(*SHOPIFY_REQUEST, ("Content-Type", "application/json; Charset=UTF-8"),
                              ("User-Agent", "Shopify-Captain-Hook"), ("x-REQUEST-id", "Req-AbC"),
                              ("X-Not-Listed", "nope"), ("Accept", "*/*"))
    assert kept(keeper, headers) == {
        **{name.lower(): value for name, value in SHOPIFY_REQUEST},
        "content-type": "application/json; Charset=UTF-8",  # the value exactly as sent, case and all
        "user-agent": "Shopify-Captain-Hook",
        "x-request-id": "Req-AbC",
    }
    assert drops == []


def test_what_is_kept_is_a_json_object_text_and_nothing_sent_is_an_empty_object() -> None:
    keeper, drops = keeper_for("shopify")
    assert keeper.keep(request_headers()) == "{}"
    assert keeper.keep(request_headers(("X-Other", "1"))) == "{}"
    value = 'quote " back\\slash \t tab caf\u00e9 \u2603'
    assert orjson.loads(keeper.keep(request_headers(("X-Request-Id", value)))) == {"x-request-id": value}
    assert drops == []


def test_clover_keeps_no_header_of_its_own_its_auth_code_is_our_secret() -> None:
    keeper, drops = keeper_for("clover", secrets=("clover-auth-code",))
    assert keeper.names == ("content-type", "user-agent")
    headers = request_headers(("X-Clover-Auth", "clover-auth-code"), ("Content-Type", "application/json"))
    assert kept(keeper, headers) == {"content-type": "application/json"}
    assert drops == []  # not dropped for its value: never a candidate at all


def test_the_bound_scheme_keeps_what_it_signs_besides_the_body() -> None:
    keeper, _ = keeper_for("orders")
    assert keeper.names[:4] == ("x-signature", "x-webhook-signature", "idempotency-key", "x-tenant-id")
    headers = request_headers(("X-Signature", "t=1764000000,v2=" + "ab" * 32), ("Idempotency-Key", "evt_1"),
                              ("X-Tenant-Id", "shop-1"))
    assert kept(keeper, headers) == {"x-signature": "t=1764000000,v2=" + "ab" * 32, "idempotency-key": "evt_1",
                                     "x-tenant-id": "shop-1"}


def test_a_repeated_header_keeps_its_first_value() -> None:
    keeper, drops = keeper_for("shopify")
    headers = request_headers(("X-Shopify-Topic", "orders/paid"), ("x-shopify-topic", "orders/cancelled"),
                              ("X-Request-Id", "first"), ("X-Request-Id", "second"))
    assert kept(keeper, headers) == {"x-shopify-topic": "orders/paid", "x-request-id": "first"}
    assert drops == []


# --- the size bound: order is priority -----------------------------------------------------------


def test_under_the_bound_the_schemes_own_survive_and_every_later_one_is_dropped_and_counted() -> None:
    own = sum(size(name, value) for name, value in SHOPIFY_REQUEST)
    extras = (("Content-Type", "application/json"), ("User-Agent", "Shopify-Captain-Hook/1.0"),
              ("X-Request-Id", "req-1"), ("X-Forwarded-For", "203.0.113.9"))
    smallest_extra = min(size(name, value) for name, value in extras)
    keeper, drops = keeper_for("shopify", max_bytes=own + smallest_extra - 1)
    # The extras come first on the wire: order of arrival gives no priority.
    result = kept(keeper, request_headers(*extras, *SHOPIFY_REQUEST))
    assert result == {name.lower(): value for name, value in SHOPIFY_REQUEST}
    assert drops == [DROPPED_SIZE] * len(extras)


def test_the_bound_is_inclusive_and_counts_utf8_bytes_of_names_and_values() -> None:
    value = "caf\u00e9-\u2603"  # 6 characters, 9 bytes in UTF-8
    exact = size("x-request-id", value)
    assert exact == len("x-request-id") + 9
    fits, fits_drops = keeper_for("shopify", max_bytes=exact)
    assert kept(fits, request_headers(("X-Request-Id", value))) == {"x-request-id": value}
    assert fits_drops == []
    one_short, short_drops = keeper_for("shopify", max_bytes=exact - 1)
    assert kept(one_short, request_headers(("X-Request-Id", value))) == {}
    assert short_drops == [DROPPED_SIZE]


def test_a_header_too_big_for_what_is_left_is_dropped_and_a_later_one_that_fits_is_still_kept() -> None:
    topic = ("X-Shopify-Topic", "orders/paid")
    keeper, drops = keeper_for("shopify", max_bytes=size(*topic) + size("x-request-id", "r-1"))
    headers = request_headers(topic, ("User-Agent", "U" * 500), ("X-Request-Id", "r-1"))
    assert kept(keeper, headers) == {"x-shopify-topic": "orders/paid", "x-request-id": "r-1"}
    assert drops == [DROPPED_SIZE]


def test_a_dropped_header_takes_no_room() -> None:
    secret_carrier = ("X-Shopify-Topic", SHOP_SECRET)
    request_id = ("X-Request-Id", "r-1")
    keeper, drops = keeper_for("shopify", max_bytes=size(*request_id))
    headers = request_headers(secret_carrier, ("User-Agent", "\udcff"), request_id)
    assert kept(keeper, headers) == {"x-request-id": "r-1"}
    assert sorted(drops) == sorted([DROPPED_SECRET, DROPPED_ENCODING])


# --- names never kept ----------------------------------------------------------------------------


FORBIDDEN = ("Authorization", "Cookie", "Set-Cookie", "Proxy-Authorization", "proxy-connection", "PROXY-X-Anything")


def test_forbidden_names_are_never_kept_even_when_a_keeper_is_given_them() -> None:
    drops = Drops()
    keeper = HeaderKeeper([*FORBIDDEN, "X-Request-Id"], SecretGuard([]), 4096, drops)
    assert keeper.names == ("x-request-id",)
    headers = request_headers(*((name, "harmless-looking-value") for name in FORBIDDEN), ("X-Request-Id", "r-1"))
    assert kept(keeper, headers) == {"x-request-id": "r-1"}


# --- values carrying a secret of ours -----------------------------------------------------------


@pytest.mark.parametrize("value", [
    SHOP_SECRET,
    f"  {SHOP_SECRET}  ",
    f"Bearer {READ_TOKEN}",
    f"a={SHOP_SECRET}",
    f"t=1764000000,v1={SHOP_SECRET}",
    f"session={READ_TOKEN}; Path=/",
    f"first, {SHOP_SECRET}, last",
    f"{READ_TOKEN}\tx",
], ids=["whole", "padded", "bearer", "a=secret", "in-a-list", "cookie-like", "comma-list", "tab"])
def test_a_value_carrying_a_secret_whole_or_as_a_part_is_dropped_and_counted(value: str) -> None:
    keeper, drops = keeper_for("shopify")
    result = kept(keeper, request_headers(("X-Shopify-Topic", "orders/paid"), ("X-Request-Id", value)))
    assert result == {"x-shopify-topic": "orders/paid"}
    assert drops == [DROPPED_SECRET]
    assert SHOP_SECRET not in keeper.keep(request_headers(("X-Request-Id", value)))
    assert READ_TOKEN not in keeper.keep(request_headers(("X-Request-Id", value)))


@pytest.mark.parametrize("value", [
    SHOP_SECRET[:-1],
    SHOP_SECRET + "0",
    "x" + SHOP_SECRET,
    SHOP_SECRET.upper(),
    f"Bearer {READ_TOKEN[:-1]}",
])
def test_a_value_that_only_resembles_a_secret_is_kept(value: str) -> None:
    keeper, drops = keeper_for("shopify")
    assert kept(keeper, request_headers(("X-Request-Id", value))) == {"x-request-id": value}
    assert drops == []


def test_the_schemes_own_headers_are_checked_for_secrets_too() -> None:
    keeper, drops = keeper_for("shopify")
    headers = request_headers(("X-Shopify-Hmac-Sha256", SHOP_SECRET), ("X-Shopify-Topic", "orders/paid"))
    assert kept(keeper, headers) == {"x-shopify-topic": "orders/paid"}
    assert drops == [DROPPED_SECRET]


def test_every_secret_given_is_guarded_not_only_the_first() -> None:
    secrets = ("secret-one-aaaa", "secret-two-bbbb", "secret-three-cccc")
    for secret in secrets:
        keeper, drops = keeper_for("shopify", secrets=secrets)
        assert kept(keeper, request_headers(("X-Request-Id", f"Bearer {secret}"))) == {}
        assert drops == [DROPPED_SECRET]


def test_with_no_secret_held_nothing_is_dropped_for_one() -> None:
    keeper, drops = keeper_for("shopify", secrets=("",))  # an empty secret is no secret: "" must not match
    assert kept(keeper, request_headers(("X-Request-Id", "a= ,;"))) == {"x-request-id": "a= ,;"}
    assert drops == []


def test_the_guard_keeps_digests_not_the_secrets() -> None:
    guard = SecretGuard([SHOP_SECRET, READ_TOKEN])
    held = repr([getattr(guard, slot) for slot in type(guard).__slots__])
    assert SHOP_SECRET not in held and READ_TOKEN not in held
    assert guard.carries_secret(SHOP_SECRET) and guard.carries_secret(f"Bearer {READ_TOKEN}")
    assert not guard.carries_secret("nothing-of-ours")


# Standard Webhooks secrets are whsec_<base64>: a 32-byte key's base64 ends in "=",
# one of the separators a value is split on. The secret is still the secret.
PADDED_SECRET = "whsec_" + base64.b64encode(b"standard-webhooks-hostile-key-32").decode()


@pytest.mark.parametrize("value", [
    PADDED_SECRET,
    f"Bearer {PADDED_SECRET}",
    f"a={PADDED_SECRET}",
    f'token="{PADDED_SECRET}"',
    f"x=1&token={PADDED_SECRET}&y=2",
], ids=["whole", "bearer", "a=secret", "quoted", "query"])
def test_a_secret_holding_a_separator_is_found_whole_and_as_a_part(value: str) -> None:
    assert PADDED_SECRET.endswith("=")
    keeper, drops = keeper_for("shopify", secrets=(PADDED_SECRET,))
    assert kept(keeper, request_headers(("X-Request-Id", value))) == {}
    assert drops == [DROPPED_SECRET]


# --- values that are not UTF-8 ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["\udcff", "caf\udce9", "ok-then-\udc80"])
def test_a_value_that_was_not_utf8_is_dropped_as_encoding_and_the_rest_kept(value: str) -> None:
    # aiohttp decodes header bytes that are not UTF-8 as lone surrogates (surrogateescape).
    keeper, drops = keeper_for("shopify")
    result = kept(keeper, request_headers(("X-Shopify-Topic", "orders/paid"), ("X-Request-Id", value)))
    assert result == {"x-shopify-topic": "orders/paid"}
    assert drops == [DROPPED_ENCODING]


# --- the sources file's headers key --------------------------------------------------------------


def test_a_tables_headers_are_parsed_in_order_and_kept_after_the_schemes_and_common_ones() -> None:
    config = parse_sources(SOURCES, {}, origin=ORIGIN)
    assert config.sources["shopify"].headers == ("X-Request-Id", "X-Forwarded-For")
    assert config.sources["orders"].headers == ()
    kept_names = build_sources(config, webhook_secret="w").kept_headers
    assert kept_names["shopify"][-2:] == ("X-Request-Id", "X-Forwarded-For")
    assert [n.lower() for n in kept_names["shopify"][:len(SHOPIFY_OWN)]] == list(SHOPIFY_OWN)


def test_x_clover_auth_may_be_listed_by_a_source_whose_secret_it_is_not() -> None:
    config = parse_sources('[sources.shopify]\nscheme = "shopify"\nsecrets = ["s"]\nheaders = ["X-Clover-Auth"]\n', {})
    assert config.sources["shopify"].headers == ("X-Clover-Auth",)


@pytest.mark.parametrize(("source", "listed"), [
    ("shopify", '"X-Request-Id"'),                      # not a list
    ("shopify", '["X Request Id"]'),                    # a space
    ("shopify", '["X-Request-Id:"]'),                   # a colon
    ("shopify", '[""]'),                                 # empty
    ("shopify", "[7]"),                                  # not a string
    ("shopify", '["X-' + "a" * 63 + '"]'),              # 65 characters
    ("shopify", '["X-Caf\u00e9"]'),                     # not a token
    ("shopify", '["Authorization"]'),
    ("shopify", '["cookie"]'),
    ("shopify", '["Set-Cookie"]'),
    ("shopify", '["Proxy-Authorization"]'),
    ("orders", '["X-Request-Id", "PROXY-Anything"]'),
    ("clover", '["X-Clover-Auth"]'),
    ("clover", '["x-clover-auth"]'),
])
def test_a_headers_entry_that_cannot_be_kept_is_one_line_naming_file_source_and_key(source: str, listed: str) -> None:
    secret = "literal-secret-value-9q8w"
    scheme = {"shopify": 'scheme = "shopify"\n', "clover": 'scheme = "clover"\n', "orders": ""}[source]
    toml = f'[sources.{source}]\n{scheme}secrets = ["{secret}"]\nheaders = {listed}\n'
    with pytest.raises(SourcesError) as caught:
        parse_sources(toml, {}, origin=ORIGIN)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    assert ORIGIN in message and f"[sources.{source}]" in message and "headers" in message, message
    assert secret not in message


def test_a_forbidden_entry_is_named_by_its_position() -> None:
    toml = '[sources.shopify]\nscheme = "shopify"\nsecrets = ["s"]\nheaders = ["X-Request-Id", "Cookie"]\n'
    with pytest.raises(SourcesError, match=r"headers\[1\]"):
        parse_sources(toml, {}, origin=ORIGIN)
