"""The delivery tests' receivers (tests/delivery/receivers.py) behave as designed.

Requests are signed here by a small Standard Webhooks signer of the test's own
(HMAC-SHA256 over ``"{id}.{ts}." + body``, base64, ``v1,``), not by the
service's signing.py, and posted with aiohttp's client to real receivers on
127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import hmac
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from tests.delivery import receivers as rx
from tests.helpers import in_background

SECRET = "whsec_" + base64.b64encode(b"receiver-test-key-0123456789abcdef").decode()
OTHER = "whsec_" + base64.b64encode(b"another-key-that-is-not-the-first!").decode()
ROOT = Path(__file__).resolve().parents[2]


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed(body: bytes, msg_id: str = "evt_1", *, secrets: Sequence[str] = (SECRET,), timestamp: int | None = None,
           tenant: str = "shop-1", source: str = "orders", key: str = "key-1") -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(signature(s, msg_id, ts, body) for s in secrets),
        "X-Tenant-Id": tenant,
        "X-Source": source,
        "Idempotency-Key": key,
    }


BODY = b'{"type":"order.created","order_id":"ord_1"}'


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


async def post(session: aiohttp.ClientSession, url: str, body: bytes = BODY, msg_id: str = "evt_1",
               headers: dict[str, str] | None = None, **options: Any) -> tuple[int, CIMultiDictProxy[str]]:
    async with session.post(url, data=body, headers=headers if headers is not None else signed(body, msg_id),
                            **options) as resp:
        await resp.read()
        return resp.status, resp.headers


# --------------------------------------------------------------------------- statuses


async def test_ok_answers_2xx_and_records_the_request(session: aiohttp.ClientSession) -> None:
    async with rx.receiver(rx.ok(), secret=SECRET) as r:
        status, _ = await post(session, r.url, BODY, "evt_7", signed(BODY, "evt_7", key="idem-7"))
        assert status == 200
        (a,) = await r.wait_for(1, settled=True)
    assert (a.order, a.method, a.path, a.webhook_id) == (0, "POST", "/hook", "evt_7")
    assert (a.tenant, a.source, a.idempotency_key) == ("shop-1", "orders", "idem-7")
    assert a.body == BODY and a.content_type == "application/json"
    assert (a.verified, a.error) == (True, None)
    assert (a.answer, a.status) == ("replied", 200)
    assert a.answered_at is not None and a.at <= a.answered_at
    assert a.header("WEBHOOK-ID") == "evt_7"
    assert r.verified_ids() == ["evt_7"] and r.unverified() == []


async def test_ok_with_another_2xx(session: aiohttp.ClientSession) -> None:
    async with rx.receiver(rx.ok(204), secret=SECRET) as r:
        assert (await post(session, r.url))[0] == 204
    with pytest.raises(ValueError):
        rx.ok(500)


async def test_error_always_500(session: aiohttp.ClientSession) -> None:
    async with rx.receiver(rx.error(), secret=SECRET) as r:
        statuses = [(await post(session, r.url, msg_id=f"evt_{i}"))[0] for i in range(3)]
    assert statuses == [500, 500, 500]
    assert r.statuses() == [500, 500, 500]


async def test_gone_is_410(session: aiohttp.ClientSession) -> None:
    async with rx.receiver(rx.gone(), secret=SECRET) as r:
        assert (await post(session, r.url))[0] == 410
    assert r.statuses() == [410]


@pytest.mark.parametrize(("behaviour", "status", "retry_after"), [
    (rx.too_many_requests(7), 429, "7"),
    (rx.unavailable(3), 503, "3"),
    (rx.unavailable("Wed, 21 Oct 2015 07:28:00 GMT"), 503, "Wed, 21 Oct 2015 07:28:00 GMT"),
    (rx.unavailable(None), 503, None),
], ids=["429", "503", "503-date", "503-none"])
async def test_retry_after(session: aiohttp.ClientSession, behaviour: rx.Behaviour, status: int,
                           retry_after: str | None) -> None:
    async with rx.receiver(behaviour, secret=SECRET) as r:
        got, headers = await post(session, r.url)
    assert got == status
    assert headers.get("Retry-After") == retry_after
    assert r.statuses() == [status]


# --------------------------------------------------------------------------- fails n times, scripts


async def test_fails_then_ok_overall(session: aiohttp.ClientSession) -> None:
    async with rx.receiver(rx.fails_then(2), secret=SECRET) as r:
        statuses = [(await post(session, r.url, msg_id=m))[0] for m in ("evt_1", "evt_2", "evt_1", "evt_2")]
    assert statuses == [500, 500, 200, 200]
    assert r.statuses() == statuses


async def test_fails_then_ok_per_webhook_id(session: aiohttp.ClientSession) -> None:
    async with rx.receiver(rx.fails_then(2, per="webhook-id"), secret=SECRET) as r:
        order = ["evt_a", "evt_a", "evt_b", "evt_a", "evt_b", "evt_b", "evt_c"]
        statuses = [(await post(session, r.url, msg_id=m))[0] for m in order]
    assert statuses == [500, 500, 500, 200, 500, 200, 500]
    assert [a.status for a in r.by_id("evt_a")] == [500, 500, 200]
    assert [a.status for a in r.by_id("evt_b")] == [500, 500, 200]


async def test_fails_then_with_another_failure_and_success(session: aiohttp.ClientSession) -> None:
    async with rx.receiver(rx.fails_then(1, failure=rx.too_many_requests(1), then=rx.ok(202)), secret=SECRET) as r:
        statuses = [(await post(session, r.url))[0] for _ in range(3)]
    assert statuses == [429, 202, 202]
    assert rx.fails_then(0).steps == []
    with pytest.raises(ValueError):
        rx.fails_then(-1)
    with pytest.raises(ValueError):
        rx.fails_then(1, per="tenant")  # type: ignore[arg-type]


async def test_fails_with_a_reset_then_ok(session: aiohttp.ClientSession) -> None:
    async with rx.receiver(rx.fails_then(1, failure=rx.reset()), secret=SECRET) as r:
        with pytest.raises(aiohttp.ClientError):
            await post(session, r.url)
        assert (await post(session, r.url))[0] == 200
    assert [(a.answer, a.status) for a in r.arrivals] == [("reset", None), ("replied", 200)]


async def test_script_steps_then(session: aiohttp.ClientSession) -> None:
    behaviour = rx.script(rx.unavailable(2), rx.gone(), then=rx.ok(201))
    async with rx.receiver(behaviour, secret=SECRET) as r:
        statuses = [(await post(session, r.url))[0] for _ in range(4)]
    assert statuses == [503, 410, 201, 201]


async def test_behaviour_can_be_swapped_while_running(session: aiohttp.ClientSession) -> None:
    async with rx.receiver(rx.error(), secret=SECRET) as r:
        assert (await post(session, r.url))[0] == 500
        r.behaviour = rx.ok()
        assert (await post(session, r.url))[0] == 200


# --------------------------------------------------------------------------- slow, hang, reset


async def test_slow_answers_after_its_delay_within_a_longer_timeout(session: aiohttp.ClientSession) -> None:
    delay = 0.3
    async with rx.receiver(rx.slow(delay, then=rx.ok(202)), secret=SECRET) as r:
        started = time.monotonic()
        status, _ = await post(session, r.url, timeout=aiohttp.ClientTimeout(total=30))
        elapsed = time.monotonic() - started
    assert status == 202
    # A lower bound only (the delay is the receiver's own): a slow machine cannot fail it.
    assert elapsed >= delay - 0.01
    (a,) = r.arrivals
    assert a.answered_at is not None and a.answered_at - a.at >= delay - 0.01


async def test_slow_is_cut_short_by_close(session: aiohttp.ClientSession) -> None:
    r = await rx.receiver(rx.slow(3600), secret=SECRET).start()
    try:
        async with in_background(post(session, r.url)) as request:
            await r.wait_for(1)
            async with asyncio.timeout(60):  # a broken close fails here instead of hanging the run
                await r.close()
            with pytest.raises(aiohttp.ClientError):
                await request
    finally:
        await r.close()
    # Woken by the receiver's own close, not cancelled by aiohttp's backstop.
    assert [(a.answer, a.status) for a in r.arrivals] == [("reset", None)]


async def test_hang_outlasts_a_client_timeout_and_still_shuts_down(session: aiohttp.ClientSession) -> None:
    r = await rx.receiver(rx.hang(), secret=SECRET).start()
    try:
        with pytest.raises(asyncio.TimeoutError):
            await post(session, r.url, timeout=aiohttp.ClientTimeout(total=0.3))
        (a,) = await r.wait_for(1, settled=True)
        assert (a.answer, a.status) == ("hanging", None)
        assert a.verified
    finally:
        async with asyncio.timeout(60):
            await r.close()
    # The handler ended through the receiver's close (not aiohttp's cancel after its backstop).
    assert (a.answer, a.status) == ("hung", None)
    assert r.in_flight == 0


async def test_hang_with_the_client_still_waiting_at_close(session: aiohttp.ClientSession) -> None:
    r = await rx.receiver(rx.hang(), secret=SECRET).start()
    try:
        async with in_background(post(session, r.url)) as request:
            await r.wait_for(1, settled=True)
            assert not request.done()
            async with asyncio.timeout(60):
                await r.close()
            with pytest.raises(aiohttp.ClientError):
                await request
    finally:
        await r.close()
    assert [(a.answer, a.status) for a in r.arrivals] == [("hung", None)]


async def test_hanging_requests_count_in_flight(session: aiohttp.ClientSession) -> None:
    async with rx.receiver(rx.hang(), secret=SECRET) as r:
        posts = [post(session, r.url, msg_id=f"evt_{i}", timeout=aiohttp.ClientTimeout(total=30)) for i in range(3)]
        async def send_all() -> list[Any]:
            return await asyncio.gather(*posts, return_exceptions=True)

        async with in_background(send_all()):
            await r.wait_for(3, settled=True)
            assert r.in_flight == 3 and r.max_in_flight == 3
    assert r.in_flight == 0
    assert sorted(map(str, r.ids())) == ["evt_0", "evt_1", "evt_2"]


@pytest.mark.parametrize("hard", [True, False], ids=["rst", "close"])
async def test_reset_closes_without_an_answer(session: aiohttp.ClientSession, hard: bool) -> None:
    async with rx.receiver(rx.reset(hard=hard), secret=SECRET) as r:
        with pytest.raises(aiohttp.ClientError) as caught:
            await post(session, r.url)
        await r.wait_for(1, settled=True)
    if hard:  # an RST: the client's read fails with ECONNRESET
        assert isinstance(caught.value, aiohttp.ClientOSError) and caught.value.errno == errno.ECONNRESET
    else:  # a plain close before any answer
        assert isinstance(caught.value, aiohttp.ServerDisconnectedError)
    (a,) = r.arrivals
    assert (a.answer, a.status, a.verified, a.body) == ("reset", None, True, BODY)


# --------------------------------------------------------------------------- redirect


async def test_redirect_is_answered_not_followed(session: aiohttp.ClientSession) -> None:
    async with rx.receiver(rx.ok(), secret=SECRET) as target, \
            rx.receiver(rx.redirect(target.url), secret=SECRET) as r:
        status, headers = await post(session, r.url, allow_redirects=False)
        assert status == 302
        assert headers["Location"] == target.url
        await r.wait_for(1, settled=True)
        assert target.arrivals == []

        # The control: a client that does follow is seen by the target, so the
        # assertion above could fail.
        assert (await post(session, r.url, allow_redirects=True))[0] == 200
        (followed,) = await target.wait_for(1)
        assert followed.method == "GET"  # aiohttp turns a POST into a GET on 302
    assert r.statuses() == [302, 302]


async def test_redirect_with_another_status(session: aiohttp.ClientSession) -> None:
    async with rx.receiver(rx.redirect("http://127.0.0.1:9/elsewhere", status=307), secret=SECRET) as r:
        status, headers = await post(session, r.url, allow_redirects=False)
    assert (status, headers["Location"]) == (307, "http://127.0.0.1:9/elsewhere")


# --------------------------------------------------------------------------- verification


async def test_verification_outcomes(session: aiohttp.ClientSession) -> None:
    now = int(time.time())
    good = signed(BODY, "evt_good")
    bad_sig = signed(BODY, "evt_bad", secrets=(OTHER,))
    stale = signed(BODY, "evt_stale", timestamp=now - 600)
    missing = {k: v for k, v in signed(BODY, "evt_missing").items() if k != "webhook-signature"}
    garbage = {**signed(BODY, "evt_garbage"), "webhook-signature": "not-a-signature"}
    async with rx.receiver(rx.ok(), secret=SECRET) as r:
        await post(session, r.url, BODY, headers=good)
        await post(session, r.url, BODY + b" ", headers=signed(BODY, "evt_tampered"))  # signed BODY, sent more
        await post(session, r.url, BODY, headers=bad_sig)
        await post(session, r.url, BODY, headers=stale)
        await post(session, r.url, BODY, headers=missing)
        await post(session, r.url, BODY, headers=garbage)
    got = {a.webhook_id: (a.verified, a.error or "") for a in r.arrivals}
    assert got["evt_good"] == (True, "")
    assert got["evt_tampered"][0] is False and "No matching signature" in got["evt_tampered"][1]
    assert got["evt_bad"][0] is False and "No matching signature" in got["evt_bad"][1]
    assert got["evt_stale"][0] is False and "too old" in got["evt_stale"][1]
    assert got["evt_missing"][0] is False and "Missing required headers" in got["evt_missing"][1]
    assert got["evt_garbage"][0] is False  # the library trips on it: recorded, no harness error
    assert r.verified_ids() == ["evt_good"]
    assert [a.webhook_id for a in r.unverified()] == ["evt_tampered", "evt_bad", "evt_stale", "evt_missing",
                                                       "evt_garbage"]
    assert r.statuses() == [200] * 6  # verification is recorded; the behaviour still answers


async def test_rotation_every_secret_must_verify(session: aiohttp.ClientSession) -> None:
    async with rx.receiver(rx.ok(), secret=[SECRET, OTHER]) as r:
        await post(session, r.url, headers=signed(BODY, "evt_both", secrets=(SECRET, OTHER)))
        await post(session, r.url, headers=signed(BODY, "evt_both_swapped", secrets=(OTHER, SECRET)))
        await post(session, r.url, headers=signed(BODY, "evt_first", secrets=(SECRET,)))
        await post(session, r.url, headers=signed(BODY, "evt_second", secrets=(OTHER,)))
    assert r.verified_ids() == ["evt_both", "evt_both_swapped"]
    errors = {a.webhook_id: a.error or "" for a in r.unverified()}
    assert "secret #1" in errors["evt_first"] and "secret #0" not in errors["evt_first"]
    assert "secret #0" in errors["evt_second"] and "secret #1" not in errors["evt_second"]


async def test_a_repeated_webhook_header_fails_verification(session: aiohttp.ClientSession) -> None:
    headers = signed(BODY, "evt_1")
    both = CIMultiDict(headers)
    both.add("webhook-signature", signature(OTHER, "evt_1", int(headers["webhook-timestamp"]), BODY))
    async with rx.receiver(rx.ok(), secret=SECRET) as r:
        async with session.post(r.url, data=BODY, headers=both) as resp:
            assert resp.status == 200
    (a,) = r.arrivals
    assert a.verified is False and "more than once" in (a.error or "")


async def test_a_body_that_is_not_utf8_is_unverified_by_the_library(session: aiohttp.ClientSession) -> None:
    body = b"\xff\xfe binary"
    async with rx.receiver(rx.ok(), secret=SECRET) as r:
        await post(session, r.url, body, headers=signed(body, "evt_bin"))
    (a,) = r.arrivals
    assert a.body == body
    assert a.verified is False and "not UTF-8" in (a.error or "")


def test_a_receiver_needs_a_valid_secret() -> None:
    with pytest.raises(ValueError):
        rx.Receiver(rx.ok(), secret=[])
    with pytest.raises(Exception):  # noqa: B017 - the library's own error for an empty key
        rx.Receiver(rx.ok(), secret="whsec_")


# --------------------------------------------------------------------------- order and waiting


async def test_arrival_order_and_times(session: aiohttp.ClientSession) -> None:
    async with rx.receiver(rx.ok(), secret=SECRET) as r:
        for i in range(5):
            body = f'{{"n":{i}}}'.encode()
            await post(session, r.url, body, headers=signed(body, f"evt_{i}", tenant=f"t{i % 2}", key=f"k{i}"))
    assert [a.order for a in r.arrivals] == [0, 1, 2, 3, 4]
    assert r.ids() == [f"evt_{i}" for i in range(5)]
    assert [a.idempotency_key for a in r.arrivals] == [f"k{i}" for i in range(5)]
    assert [a.tenant for a in r.arrivals] == ["t0", "t1", "t0", "t1", "t0"]
    assert [a.body for a in r.arrivals] == [f'{{"n":{i}}}'.encode() for i in range(5)]
    ats = [a.at for a in r.arrivals]
    assert ats == sorted(ats)


async def test_concurrent_arrivals_are_numbered_in_time_order(session: aiohttp.ClientSession) -> None:
    async with rx.receiver(rx.ok(), secret=SECRET) as r:
        await asyncio.gather(*(post(session, r.url, msg_id=f"evt_{i}") for i in range(8)))
    assert [a.order for a in r.arrivals] == list(range(8))
    assert sorted(map(str, r.ids())) == sorted(f"evt_{i}" for i in range(8))
    ats = [a.at for a in r.arrivals]
    assert ats == sorted(ats)


async def test_wait_for_wakes_on_arrivals(session: aiohttp.ClientSession) -> None:
    async with rx.receiver(rx.ok(), secret=SECRET) as r:
        gate = asyncio.Event()

        async def later() -> None:
            await gate.wait()
            for i in range(3):
                await post(session, r.url, msg_id=f"evt_{i}")

        async with in_background(later()) as sending:
            # A deadline far beyond the test's: the waiter must be woken by the arrivals, not by its timeout.
            waiting = asyncio.ensure_future(r.wait_for(3, timeout=3600))
            await asyncio.sleep(0)  # the waiter is parked before any request is sent
            assert not waiting.done()
            gate.set()
            await sending  # the 3 requests were recorded before they were answered
            done, _ = await asyncio.wait([waiting], timeout=10)
            if not done:
                waiting.cancel()
                pytest.fail("wait_for(3) was not woken by the third arrival")
            arrivals = waiting.result()
        assert [a.webhook_id for a in arrivals] == ["evt_0", "evt_1", "evt_2"]
        assert await r.until(lambda arrivals: arrivals[-1].webhook_id, timeout=5) == "evt_2"


async def test_wait_for_settled_waits_for_the_answer(session: aiohttp.ClientSession) -> None:
    release = asyncio.Event()

    async def gated(call: rx.Call) -> rx.Outcome:
        await release.wait()
        return rx.Reply(201)

    async with rx.receiver(gated, secret=SECRET) as r:
        async with in_background(post(session, r.url)) as request:
            (a,) = await r.wait_for(1)
            assert (a.answer, a.status) == ("pending", None)
            settling = asyncio.ensure_future(r.wait_for(1, settled=True))
            await asyncio.sleep(0)
            assert not settling.done()
            release.set()
            (a,) = await settling
            assert (a.answer, a.status) == ("replied", 201)
            assert (await request)[0] == 201


async def test_wait_for_fails_when_nothing_comes() -> None:
    async with rx.receiver(rx.ok(), secret=SECRET) as r, asyncio.timeout(60):  # a deadline that never fires fails here
        with pytest.raises(AssertionError, match=r"timed out after 0\.2 s waiting for 1 request"):
            await r.wait_for(1, timeout=0.2)
        with pytest.raises(AssertionError, match=r"timed out .* waiting for a tenant"):
            await r.until(lambda arrivals: False, timeout=0.05, what="a tenant")


# --------------------------------------------------------------------------- a broken harness fails, never hangs


async def test_a_behaviour_that_raises_fails_the_test_not_the_server(session: aiohttp.ClientSession) -> None:
    async def broken(call: rx.Call) -> rx.Outcome:
        raise RuntimeError("a bug in a behaviour")

    with pytest.raises(AssertionError, match="a bug in a behaviour") as leaving:
        async with rx.receiver(broken, secret=SECRET) as r:
            assert (await post(session, r.url))[0] == 500
            with pytest.raises(AssertionError, match="a bug in a behaviour"):
                await r.wait_for(2, timeout=30)  # raises at once: it would otherwise time out
    assert "harness failed" in str(leaving.value)
    assert [(a.answer, a.status) for a in r.arrivals] == [("harness-error", 500)]


async def test_a_behaviour_returning_nonsense_is_a_harness_error(session: aiohttp.ClientSession) -> None:
    async def nonsense(call: rx.Call) -> rx.Outcome:
        return 200  # type: ignore[return-value]

    with pytest.raises(AssertionError, match="not Reply, Reset or Hang"):
        async with rx.receiver(nonsense, secret=SECRET) as r:
            assert (await post(session, r.url))[0] == 500


# --------------------------------------------------------------------------- a process of its own


async def test_runs_as_a_process_for_benches(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    log = tmp_path / "arrivals.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.delivery.receivers", "--behaviour", "fails-then-ok", "--times", "1",
        "--port", "0", "--secret", SECRET, "--arrivals", str(log),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        first = await asyncio.wait_for(proc.stdout.readline(), 60)  # type: ignore[union-attr]
        port = int(first)
        url = f"http://127.0.0.1:{port}/hook"
        assert (await post(session, url, msg_id="evt_1"))[0] == 500
        assert (await post(session, url, msg_id="evt_1"))[0] == 200
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(d["order"], d["webhook_id"], d["verified"], d["status"]) for d in lines] == [
        (0, "evt_1", True, 500), (1, "evt_1", True, 200)]
    assert base64.b64decode(lines[0]["body_base64"]) == BODY
    assert lines[0]["tenant"] == "shop-1" and lines[0]["idempotency_key"] == "key-1"
