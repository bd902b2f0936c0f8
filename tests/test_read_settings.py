"""The read side's settings: CODEX_API_TOKENS, RETENTION, READ_NOTIFY."""

from __future__ import annotations

import pytest

from codex_ingest.settings import SERVE_OPTIONS, ConfigError, ReadToken, load_settings

BASE = {"WEBHOOK_SECRET": "s"}
TOKEN_A = "token-for-shops-0123456789"
TOKEN_ALL = "token-for-everyone-0123456789"


def test_defaults_leave_reading_and_retention_off_and_notify_on() -> None:
    settings = load_settings(SERVE_OPTIONS, {}, BASE)
    assert (settings.api_tokens, settings.retention, settings.read_notify) == ((), None, True)


def test_tokens_durations_and_flags_parse() -> None:
    env = {**BASE, "CODEX_API_TOKENS": f" {TOKEN_A}=shop-1,shop-2 ; {TOKEN_ALL}=* ;", "RETENTION": "7d", "READ_NOTIFY": "off"}
    settings = load_settings(SERVE_OPTIONS, {"retention": "12h"}, env)
    assert settings.api_tokens == (ReadToken(TOKEN_A, frozenset({"shop-1", "shop-2"})), ReadToken(TOKEN_ALL, None))
    assert settings.retention == 12 * 3600 and settings.read_notify is False
    assert TOKEN_A not in repr(settings)


@pytest.mark.parametrize("value", [
    "short=shop-1",                       # a token under 16 characters
    f"{TOKEN_A}",                         # no scope
    f"{TOKEN_A}=bad tenant!",             # a tenant that cannot exist
    f"{TOKEN_A}=shop-1;{TOKEN_A}=*",      # the same token twice
    f"{TOKEN_A}=",                        # an empty scope
])
def test_a_bad_token_list_is_one_line_that_never_echoes_a_token(value) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(SERVE_OPTIONS, {}, {**BASE, "CODEX_API_TOKENS": value})
    message = str(caught.value)
    assert message.startswith("CODEX_API_TOKENS") and "\n" not in message
    assert TOKEN_A not in message


@pytest.mark.parametrize("value", ["7", "1w", "-1d", "0s", "soon"])
def test_a_bad_retention_is_one_line(value) -> None:
    with pytest.raises(ConfigError, match=r"^RETENTION must"):
        load_settings(SERVE_OPTIONS, {}, {**BASE, "RETENTION": value})
