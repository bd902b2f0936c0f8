"""The HMAC-SHA256 verifier on its own."""

from __future__ import annotations

import pytest

from codex_ingest.errors import InvalidSignature
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
