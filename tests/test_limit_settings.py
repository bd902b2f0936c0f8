"""The read-deadline and rate-limit settings: defaults, parsing, one-line errors."""

from __future__ import annotations

import pytest

from codex_ingest.settings import SERVE_OPTIONS, ConfigError, load_settings

BASE = {"WEBHOOK_SECRET": "s"}


def test_defaults_bound_every_read_and_leave_the_rate_limit_off() -> None:
    settings = load_settings(SERVE_OPTIONS, {}, BASE)
    assert (settings.header_read_timeout, settings.body_read_timeout, settings.keepalive_timeout) == (10.0, 30.0, 75.0)
    assert (settings.rate_limit_per_sec, settings.rate_limit_burst) == (0.0, 10)


def test_environment_and_flags_set_them() -> None:
    env = {**BASE, "HEADER_READ_TIMEOUT": "2.5", "BODY_READ_TIMEOUT": "4", "KEEPALIVE_TIMEOUT": "9",
           "RATE_LIMIT_PER_SEC": "0.5", "RATE_LIMIT_BURST": "3"}
    settings = load_settings(SERVE_OPTIONS, {"rate_limit_burst": "7"}, env)
    assert (settings.header_read_timeout, settings.body_read_timeout, settings.keepalive_timeout) == (2.5, 4.0, 9.0)
    assert (settings.rate_limit_per_sec, settings.rate_limit_burst) == (0.5, 7)


@pytest.mark.parametrize(
    "name, value",
    [
        ("HEADER_READ_TIMEOUT", "0"),
        ("BODY_READ_TIMEOUT", "-1"),
        ("KEEPALIVE_TIMEOUT", "soon"),
        ("RATE_LIMIT_PER_SEC", "-2"),
        ("RATE_LIMIT_BURST", "0"),
        ("RATE_LIMIT_BURST", "1.5"),
    ],
)
def test_bad_values_are_one_line_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(SERVE_OPTIONS, {}, {**BASE, name: value})
    assert str(error.value).startswith(name)
    assert "\n" not in str(error.value)
