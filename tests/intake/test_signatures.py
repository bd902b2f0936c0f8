"""The HMAC-SHA256 verifier on its own, and the constant-time comparison
every signature scheme (and Clover's auth code) must go through."""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from multidict import CIMultiDict

import codex_ingest
from codex_ingest.errors import InvalidSignature
from codex_ingest.intake import signatures
from codex_ingest.intake.schemes import clover
from codex_ingest.intake.schemes.clover import CloverScheme
from codex_ingest.intake.schemes.generic import GenericHmacScheme
from codex_ingest.intake.schemes.shopify import ShopifyScheme
from codex_ingest.intake.schemes.square import SquareScheme
from codex_ingest.intake.schemes.standard_webhooks import StandardWebhooksScheme
from codex_ingest.intake.schemes.stripe import StripeScheme
from codex_ingest.intake.schemes.toast import ToastScheme
from codex_ingest.intake.signatures import HmacSha256Verifier
from tests.helpers import SECRET, sign

BODY = b'{"a":1}'


def test_sign_matches_an_independent_hmac() -> None:
    assert HmacSha256Verifier(SECRET).sign(BODY) == sign(BODY)


@pytest.mark.parametrize("header", [sign(BODY), sign(BODY)[7:], sign(BODY).upper().replace("SHA256=", "sha256="), f"  {sign(BODY)} "])
def test_accepted_forms(header: str) -> None:
    HmacSha256Verifier(SECRET).verify(BODY, header)


@pytest.mark.parametrize(
    "header", [None, "", "sha256=", "sha256=" + "g" * 64, "SHA256=" + sign(BODY)[7:], sign(BODY) + "00", "caf\u00e9", sign(BODY + b" ")]
)
def test_rejected_forms(header: str | None) -> None:
    with pytest.raises(InvalidSignature):
        HmacSha256Verifier(SECRET).verify(BODY, header)


def test_a_rotated_secret_no_longer_verifies() -> None:
    with pytest.raises(InvalidSignature):
        HmacSha256Verifier("new-secret").verify(BODY, sign(BODY))


def test_verifier_reuse_does_not_leak_state_between_bodies() -> None:
    verifier = HmacSha256Verifier(SECRET)
    for body in (b"{}", BODY, b"[1,2,3]", BODY):
        verifier.verify(body, sign(body))


# -- constant time, by behaviour -------------------------------------------------------
#
# Every scheme that verifies an HMAC, and Clover's auth code, must reach its
# verdict through hmac.compare_digest over the whole computed digest and the
# whole candidate, for every (key, candidate) pair: a spy stands in for the
# ``hmac`` name in the modules that call it. A comment naming compare_digest
# satisfies none of this.

KEY_OTHER, KEY = "rotated-out-secret", "the-right-secret"
SW_KEY_OTHER, SW_KEY = b"standard-webhooks-key-other-32by", b"standard-webhooks-key-right-32by"
NOW = 1_795_432_000
TOAST_TIME = "2026-11-22T18:44:31.207+00:00"
SQUARE_URL = "https://example.com/pos/square/ingest"


class CompareSpy:
    """The ``hmac`` module, but every compare_digest call is recorded; it
    answers truthfully, or ``verdict`` when one is set."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes]] = []
        self.verdict: bool | None = None

    def __getattr__(self, name: str) -> object:
        return getattr(hmac, name)

    def compare_digest(self, a: bytes, b: bytes) -> bool:
        self.calls.append((bytes(a), bytes(b)))
        same = hmac.compare_digest(a, b)
        return same if self.verdict is None else self.verdict


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> CompareSpy:
    spy = CompareSpy()
    monkeypatch.setattr(signatures, "hmac", spy)
    monkeypatch.setattr(clover, "hmac", spy)
    return spy


def mac(key: str | bytes, *parts: bytes) -> bytes:
    return hmac.new(key.encode() if isinstance(key, str) else key, b"".join(parts), hashlib.sha256).digest()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@dataclass(frozen=True)
class Case:
    """A scheme configured with two secrets (the right one second), a body,
    the header that carries a candidate, and what the scheme must compare."""

    scheme: Callable[[], object]
    body: bytes
    headers: Callable[[bytes], dict[str, str]]  # candidate -> the request's headers
    digests: tuple[bytes, bytes]                # computed under each secret, in order
    candidate: bytes                            # the right one


def _stripe_headers(candidate: bytes) -> dict[str, str]:
    return {"Stripe-Signature": f"t={NOW},v1={candidate.hex()}"}


def _sw_headers(candidate: bytes) -> dict[str, str]:
    return {"webhook-id": "msg_1", "webhook-timestamp": str(NOW), "webhook-signature": "v1," + b64(candidate)}


GENERIC_BODY = b'{"n":1}'
SQUARE_BODY = b'{"event_id":"e-1","merchant_id":"m-1"}'
SHOPIFY_BODY = b'{"id":1}'
STRIPE_BODY = b'{"id":"evt_1"}'
SW_BODY = b'{"type":"invoice.paid"}'
TOAST_BODY = b'{"guid":"g-1","timestamp":"%s"}' % TOAST_TIME.encode()
CLOVER_BODY = b'{"appId":"A","merchants":{"M1":[{"objectId":"O:1","type":"CREATE","ts":1}]}}'

CASES = {
    "generic": Case(
        lambda: GenericHmacScheme([KEY_OTHER, KEY]), GENERIC_BODY,
        lambda c: {"X-Signature": "sha256=" + c.hex()},
        (mac(KEY_OTHER, GENERIC_BODY), mac(KEY, GENERIC_BODY)), mac(KEY, GENERIC_BODY)),
    "square": Case(
        lambda: SquareScheme([KEY_OTHER, KEY], SQUARE_URL), SQUARE_BODY,
        lambda c: {"x-square-hmacsha256-signature": b64(c)},
        (mac(KEY_OTHER, SQUARE_URL.encode(), SQUARE_BODY), mac(KEY, SQUARE_URL.encode(), SQUARE_BODY)),
        mac(KEY, SQUARE_URL.encode(), SQUARE_BODY)),
    "shopify": Case(
        lambda: ShopifyScheme([KEY_OTHER, KEY]), SHOPIFY_BODY,
        lambda c: {"X-Shopify-Hmac-Sha256": b64(c), "X-Shopify-Webhook-Id": "w-1"},
        (mac(KEY_OTHER, SHOPIFY_BODY), mac(KEY, SHOPIFY_BODY)), mac(KEY, SHOPIFY_BODY)),
    "stripe": Case(
        lambda: StripeScheme([KEY_OTHER, KEY], 300, lambda: NOW), STRIPE_BODY, _stripe_headers,
        (mac(KEY_OTHER, b"%d." % NOW, STRIPE_BODY), mac(KEY, b"%d." % NOW, STRIPE_BODY)),
        mac(KEY, b"%d." % NOW, STRIPE_BODY)),
    "standard-webhooks": Case(
        lambda: StandardWebhooksScheme(["whsec_" + b64(SW_KEY_OTHER), "whsec_" + b64(SW_KEY)], 300, lambda: NOW),
        SW_BODY, _sw_headers,
        (mac(SW_KEY_OTHER, b"msg_1.%d." % NOW, SW_BODY), mac(SW_KEY, b"msg_1.%d." % NOW, SW_BODY)),
        mac(SW_KEY, b"msg_1.%d." % NOW, SW_BODY)),
    "toast": Case(
        lambda: ToastScheme([KEY_OTHER, KEY], 300, lambda: datetime.fromisoformat(TOAST_TIME).timestamp()),
        TOAST_BODY, lambda c: {"Toast-Signature": b64(c), "Toast-Restaurant-External-ID": "r-1"},
        (mac(KEY_OTHER, TOAST_BODY, TOAST_TIME.encode()), mac(KEY, TOAST_BODY, TOAST_TIME.encode())),
        mac(KEY, TOAST_BODY, TOAST_TIME.encode())),
    # Clover's auth code is a static value, compared as SHA-256 digests (equal lengths).
    "clover": Case(
        lambda: CloverScheme([KEY_OTHER, KEY]), CLOVER_BODY, lambda c: {"X-Clover-Auth": c.decode()},
        (hashlib.sha256(KEY_OTHER.encode()).digest(), hashlib.sha256(KEY.encode()).digest()), KEY.encode()),
}


def _compared(case: Case, candidate: bytes) -> list[tuple[bytes, bytes]]:
    """The (computed, given) pairs the scheme must hand to compare_digest, in either order."""
    given = hashlib.sha256(candidate).digest() if case is CASES["clover"] else candidate
    return [(digest, given) for digest in case.digests]


def _as_sets(pairs: list[tuple[bytes, bytes]]) -> list[frozenset[bytes]]:
    return sorted((frozenset(p) for p in pairs), key=sorted)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_key_is_compared_with_compare_digest_over_whole_digests(spy: CompareSpy, name: str) -> None:
    case = CASES[name]
    read = case.scheme().read(CIMultiDict(case.headers(case.candidate)), case.body)  # type: ignore[attr-defined]
    assert read, "the right signature must verify"
    # Each configured secret against the candidate, whole (no prefix), none skipped.
    assert _as_sets(spy.calls) == _as_sets(_compared(case, case.candidate))


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_verdict_is_compare_digests_alone(spy: CompareSpy, name: str) -> None:
    case = CASES[name]
    scheme = case.scheme()
    spy.verdict = False  # compare_digest says "different": nothing else may say "same"
    with pytest.raises(InvalidSignature):
        scheme.read(CIMultiDict(case.headers(case.candidate)), case.body)  # type: ignore[attr-defined]
    assert spy.calls


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_candidate_wrong_only_in_its_last_byte_is_refused_after_a_whole_comparison(spy: CompareSpy, name: str) -> None:
    case = CASES[name]
    wrong = case.candidate[:-1] + bytes([case.candidate[-1] ^ 0x01])
    with pytest.raises(InvalidSignature):
        case.scheme().read(CIMultiDict(case.headers(wrong)), case.body)  # type: ignore[attr-defined]
    assert _as_sets(spy.calls) == _as_sets(_compared(case, wrong))


# -- no equality operator on a secret, anywhere in the package ---------------------------

PACKAGE = Path(codex_ingest.__file__).resolve().parent
# Names whose values are secrets, signatures, digests or tokens.
SENSITIVE = re.compile(r"digest|signature|secret|token|sha256|hmac|(^|_)mac(_|$)|password", re.IGNORECASE)
_EQUALITY = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)
_DUNDERS = {"__eq__", "__ne__", "__contains__"}
_OPERATOR_FUNCS = {"eq", "ne", "contains", "is_", "countOf", "indexOf"}


def _sensitive_names(node: ast.AST) -> set[str]:
    """Names an expression's value comes from; a len(), and UPPER_CASE constants, are public."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "len":
        return set()
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
    return {n for n in names if not n.lstrip("_").isupper() and SENSITIVE.search(n)}


def equality_on_secrets(source: str, filename: str = "<string>") -> list[str]:
    """Each ``==``, ``!=``, ``in``, ``not in``, ``x.__eq__(y)`` (and kin) or
    ``operator.eq`` applied to a secret, signature, digest or token name."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        operands: list[ast.AST] = []
        if isinstance(node, ast.Compare) and any(isinstance(op, _EQUALITY) for op in node.ops):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in _DUNDERS:
                operands = [node.func.value, *node.args]
            elif node.func.attr in _OPERATOR_FUNCS and isinstance(node.func.value, ast.Name) and node.func.value.id == "operator":
                operands = list(node.args)
        if any(_sensitive_names(operand) for operand in operands):
            found.append(f"{filename}:{getattr(node, 'lineno', '?')}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize(
    "snippet",
    [
        "matched |= digest.__eq__(candidate)",
        "ok = signature == expected",
        "ok = given != self._secret",
        "ok = token in self._tokens",
        "ok = operator.eq(digest, code)",
        "ok = digest[:4] == candidate[:4]",
        "ok = (digest).__ne__(candidate)",
    ],
)
def test_the_equality_check_sees_each_form(snippet: str) -> None:
    assert equality_on_secrets(snippet)


@pytest.mark.parametrize(
    "snippet",
    [
        "# never digest == candidate: use hmac.compare_digest",
        "ok = hmac.compare_digest(digest, candidate)",
        "ok = len(digest) != DIGEST_SIZE",
        "ok = signature is None",
        "ok = version != 'v1'",
    ],
)
def test_the_equality_check_passes_what_leaks_nothing(snippet: str) -> None:
    assert not equality_on_secrets(snippet)


def test_no_secret_signature_digest_or_token_is_compared_with_an_equality_operator() -> None:
    offenders = [hit for path in sorted(PACKAGE.rglob("*.py"))
                 for hit in equality_on_secrets(path.read_text(), str(path.relative_to(PACKAGE)))]
    assert not offenders, "use hmac.compare_digest:\n" + "\n".join(offenders)
