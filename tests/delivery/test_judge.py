"""How the delivery engine judges one answer of a destination (engine.judge,
engine.retry_after_seconds), as pure functions: no server, no database.

Proven here: every 2xx is delivered, whatever the attempt; a redirect (never
followed), any other 4xx and any 5xx is a failure retried on the schedule,
±20% jitter and never beyond, then parked after the last scheduled retry; no
answer at all is retried and parked the same way, its error kept; 410 Gone
disables the destination and keeps the row pending, whatever the attempt;
429 and 503 honour a Retry-After in delta seconds (no jitter), clamped to the
schedule's shortest and longest wait, while 429 without one and any other
status with one follow the schedule; Retry-After is read only as ASCII
digits, so a date, a negative number, other scripts' digits or nothing at all
give None."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from codex_ingest.delivery.engine import judge, retry_after_seconds

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
SCHEDULE = (10.0, 100.0, 1000.0)


def wait_of(outcome) -> float:
    """Seconds from NOW to the outcome's next attempt."""
    assert outcome.next_at is not None, outcome
    return (outcome.next_at - NOW).total_seconds()


def middle() -> float:
    """An rng at the middle of its range: no jitter at all."""
    return 0.5


# --------------------------------------------------------------------------- 2xx


@pytest.mark.parametrize("status", [200, 201, 204, 299])
@pytest.mark.parametrize("attempt", [1, 2, len(SCHEDULE) + 1, 50])
def test_every_2xx_is_delivered_whatever_the_attempt(status: int, attempt: int) -> None:
    outcome = judge(status, None, attempt, SCHEDULE, NOW, rng=middle)
    assert (outcome.state, outcome.next_at, outcome.status, outcome.error, outcome.disable) == (
        "delivered", None, status, None, False)


@pytest.mark.parametrize("status", [200, 204])
def test_a_2xx_with_retry_after_is_still_delivered(status: int) -> None:
    outcome = judge(status, None, 1, SCHEDULE, NOW, retry_after=60.0, rng=middle)
    assert (outcome.state, outcome.next_at) == ("delivered", None)


# --------------------------------------------------------------------------- failures on the schedule


@pytest.mark.parametrize("status", [301, 302, 307, 308, 400, 401, 403, 404, 409, 413, 422, 429, 500, 502, 503, 504])
@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_redirects_other_4xx_and_5xx_are_retried_on_the_schedule(status: int, attempt: int) -> None:
    outcome = judge(status, None, attempt, SCHEDULE, NOW, rng=middle)
    assert outcome.state == "pending"
    assert outcome.disable is False
    assert outcome.status == status
    assert outcome.error == f"HTTP {status}"
    assert wait_of(outcome) == pytest.approx(SCHEDULE[attempt - 1])


@pytest.mark.parametrize("status", [302, 404, 429, 500, 503])
def test_after_the_last_scheduled_retry_a_failure_is_parked(status: int) -> None:
    last = judge(status, None, len(SCHEDULE), SCHEDULE, NOW, rng=middle)
    assert last.state == "pending"  # the last scheduled retry is still to come
    for attempt in (len(SCHEDULE) + 1, len(SCHEDULE) + 7):
        outcome = judge(status, None, attempt, SCHEDULE, NOW, rng=middle)
        assert (outcome.state, outcome.next_at, outcome.status, outcome.error, outcome.disable) == (
            "parked", None, status, f"HTTP {status}", False)


def test_a_one_step_schedule_retries_once_then_parks() -> None:
    assert judge(500, None, 1, (0.05,), NOW, rng=middle).state == "pending"
    assert judge(500, None, 2, (0.05,), NOW, rng=middle).state == "parked"


def test_a_failure_with_retry_after_is_parked_after_the_last_retry_all_the_same() -> None:
    for status in (429, 503):
        outcome = judge(status, None, len(SCHEDULE) + 1, SCHEDULE, NOW, retry_after=20.0, rng=middle)
        assert (outcome.state, outcome.next_at) == ("parked", None)


# --------------------------------------------------------------------------- no answer


@pytest.mark.parametrize("error", ["no answer within 1 s", "ClientOSError", "ServerDisconnectedError"])
def test_no_answer_is_retried_with_its_error_kept_then_parked(error: str) -> None:
    for attempt in range(1, len(SCHEDULE) + 1):
        outcome = judge(None, error, attempt, SCHEDULE, NOW, rng=middle)
        assert (outcome.state, outcome.status, outcome.error, outcome.disable) == ("pending", None, error, False)
        assert wait_of(outcome) == pytest.approx(SCHEDULE[attempt - 1])
    parked = judge(None, error, len(SCHEDULE) + 1, SCHEDULE, NOW, rng=middle)
    assert (parked.state, parked.next_at, parked.status, parked.error) == ("parked", None, None, error)


def test_no_answer_with_a_retry_after_value_follows_the_schedule() -> None:
    outcome = judge(None, "ClientOSError", 1, SCHEDULE, NOW, retry_after=500.0, rng=middle)
    assert wait_of(outcome) == pytest.approx(SCHEDULE[0])


# --------------------------------------------------------------------------- jitter


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_the_jitter_spans_exactly_plus_or_minus_20_percent(attempt: int) -> None:
    scheduled = SCHEDULE[attempt - 1]
    assert wait_of(judge(500, None, attempt, SCHEDULE, NOW, rng=lambda: 0.0)) == pytest.approx(0.8 * scheduled)
    assert wait_of(judge(500, None, attempt, SCHEDULE, NOW, rng=lambda: 1.0)) == pytest.approx(1.2 * scheduled)
    assert wait_of(judge(500, None, attempt, SCHEDULE, NOW, rng=lambda: 0.5)) == pytest.approx(scheduled)
    assert wait_of(judge(None, "x", attempt, SCHEDULE, NOW, rng=lambda: 0.0)) == pytest.approx(0.8 * scheduled)
    assert wait_of(judge(None, "x", attempt, SCHEDULE, NOW, rng=lambda: 1.0)) == pytest.approx(1.2 * scheduled)


def test_the_default_jitter_spreads_retries_within_20_percent() -> None:
    random.seed(20)
    waits = [wait_of(judge(503, None, 2, SCHEDULE, NOW)) for _ in range(500)]
    assert all(80.0 - 1e-9 <= w <= 120.0 + 1e-9 for w in waits), (min(waits), max(waits))
    # Spread, not a constant: both halves of the window are used.
    assert min(waits) < 90.0 < 110.0 < max(waits), (min(waits), max(waits))


# --------------------------------------------------------------------------- 410 Gone


@pytest.mark.parametrize("attempt", [1, 2, len(SCHEDULE), len(SCHEDULE) + 1, 99])
def test_410_disables_the_destination_and_keeps_the_row_pending_whatever_the_attempt(attempt: int) -> None:
    outcome = judge(410, None, attempt, SCHEDULE, NOW, retry_after=60.0, rng=lambda: 0.0)
    assert outcome.disable is True
    assert outcome.state == "pending"
    assert outcome.status == 410
    assert outcome.next_at == NOW  # due again as soon as an operator enables the destination
    assert outcome.error and "410" in outcome.error


@pytest.mark.parametrize("status", [200, 302, 404, 429, 500, 503, None])
def test_nothing_but_410_disables(status: int | None) -> None:
    for attempt in (1, len(SCHEDULE) + 1):
        assert judge(status, None if status else "ClientOSError", attempt, SCHEDULE, NOW, rng=middle).disable is False


# --------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_429_and_503_honour_retry_after_without_jitter(status: int, attempt: int) -> None:
    for rng in (lambda: 0.0, lambda: 1.0):
        outcome = judge(status, None, attempt, SCHEDULE, NOW, retry_after=42.0, rng=rng)
        assert (outcome.state, outcome.status, outcome.error) == ("pending", status, f"HTTP {status}")
        assert outcome.next_at == NOW + timedelta(seconds=42)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_below_the_shortest_wait_is_raised_to_it(status: int) -> None:
    # The third retry is scheduled 1000 s out, but the clamp is the schedule's bounds, not that step.
    for retry_after in (0.0, 1.0, 9.999):
        for attempt in (1, 3):
            outcome = judge(status, None, attempt, SCHEDULE, NOW, retry_after=retry_after, rng=middle)
            assert outcome.next_at == NOW + timedelta(seconds=min(SCHEDULE)), (retry_after, attempt)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_above_the_longest_wait_is_cut_to_it(status: int) -> None:
    for retry_after in (1000.001, 86400.0, 1e12):
        for attempt in (1, 3):
            outcome = judge(status, None, attempt, SCHEDULE, NOW, retry_after=retry_after, rng=middle)
            assert outcome.next_at == NOW + timedelta(seconds=max(SCHEDULE)), (retry_after, attempt)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_at_the_bounds_is_kept(status: int) -> None:
    low = judge(status, None, 2, SCHEDULE, NOW, retry_after=10.0, rng=middle)
    high = judge(status, None, 2, SCHEDULE, NOW, retry_after=1000.0, rng=middle)
    assert (wait_of(low), wait_of(high)) == (10.0, 1000.0)


def test_the_clamp_uses_the_schedules_extremes_whatever_their_order() -> None:
    schedule = (300.0, 5.0, 60.0)
    assert wait_of(judge(429, None, 1, schedule, NOW, retry_after=1.0, rng=middle)) == 5.0
    assert wait_of(judge(429, None, 1, schedule, NOW, retry_after=9999.0, rng=middle)) == 300.0


@pytest.mark.parametrize("rng, factor", [(lambda: 0.0, 0.8), (lambda: 1.0, 1.2), (middle, 1.0)])
def test_429_without_retry_after_follows_the_schedule(rng, factor: float) -> None:
    outcome = judge(429, None, 2, SCHEDULE, NOW, retry_after=None, rng=rng)
    assert outcome.state == "pending"
    assert wait_of(outcome) == pytest.approx(factor * SCHEDULE[1])


@pytest.mark.parametrize("status", [500, 502, 404, 302])
def test_retry_after_on_another_status_is_ignored(status: int) -> None:
    outcome = judge(status, None, 1, SCHEDULE, NOW, retry_after=500.0, rng=lambda: 1.0)
    assert outcome.state == "pending"
    assert wait_of(outcome) == pytest.approx(1.2 * SCHEDULE[0])


# --------------------------------------------------------------------------- retry_after_seconds


@pytest.mark.parametrize("value, seconds", [
    ("0", 0.0),
    ("1", 1.0),
    ("120", 120.0),
    ("007", 7.0),
    (" 30", 30.0),
    ("30 ", 30.0),
    ("\t 45 \t", 45.0),
    ("86400000", 86400000.0),
])
def test_retry_after_in_delta_seconds_is_read(value: str, seconds: float) -> None:
    assert retry_after_seconds(value) == seconds


@pytest.mark.parametrize("value", [
    None,
    "",
    "   ",
    "Wed, 21 Oct 2015 07:28:00 GMT",    # the HTTP-date form: ignored
    "Fri, 31 Dec 1999 23:59:59 GMT",
    "-5",
    "-0",
    "+5",
    "1.5",
    "1e3",
    "3 0",
    "30s",
    "\u0663",                           # ٣: ARABIC-INDIC DIGIT THREE, a digit to str.isdigit
    "\u0661\u0662\u0660",                # ١٢٠
    "\uff13\uff10",                      # FULLWIDTH DIGIT THREE, FULLWIDTH DIGIT ZERO
    "\u00b3",                            # ³: SUPERSCRIPT THREE, a digit to str.isdigit
    "0x10",
])
def test_anything_but_ascii_delta_seconds_is_no_retry_after(value: str | None) -> None:
    assert retry_after_seconds(value) is None
