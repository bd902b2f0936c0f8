"""What one reader can take from GET /events, bounded: a page's bytes
(READ_PAGE_MAX_BYTES, cut by the database itself), the readers a worker keeps
waiting at the head (READ_MAX_WAITING), and the cursor, checked against its SQL
types before the database sees it (fuzzed)."""

from __future__ import annotations

import base64
import contextlib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import asyncpg
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codex_ingest.errors import InvalidParameter
from codex_ingest.settings import ReadToken
from codex_ingest.storage.delivery import Cursor
from codex_ingest.storage.queries import load_queries
from tests import live as live_service
from tests.cli import BASE_ENV
from tests.helpers import READ_TOKEN, headers, in_background, readers_waiting, until

TOKEN = "reader-token-read-limits-0123456789"
XID8_MAX = 2**64 - 1
BIGINT_MAX = 2**63 - 1


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def body_of(size: int, n: int) -> bytes:
    """A JSON object of exactly ``size`` bytes, different for each ``n``."""
    head = b'{"n":%d,"p":"' % n
    return head + b"x" * (size - len(head) - 2) + b'"}'


async def post(client, body: bytes, tenant: str = "shop-a") -> int:
    resp = await client.post("/pos/orders/ingest", data=body, headers=headers(body, tenant=tenant))
    assert resp.status == 201, await resp.text()
    return (await resp.json())["event_id"]


async def get(client, **params) -> tuple[int, dict[str, str], dict]:
    resp = await client.get("/events?" + urlencode({"tenant": "shop-a", **params}), headers=bearer())
    return resp.status, dict(resp.headers), await resp.json()


async def pages(client, **params) -> list[list[int]]:
    """Every page of shop-a's events, following next_cursor, as lists of event ids."""
    found: list[list[int]] = []
    cursor = None
    for _ in range(100):
        status, _, page = await get(client, **params, **({"after": cursor} if cursor else {}))
        assert status == 200, page
        if not page["events"]:
            return found
        found.append([e["event_id"] for e in page["events"]])
        cursor = page["next_cursor"]
    raise AssertionError("more than 100 pages")


# -- A. a page's bytes ---------------------------------------------------------------------


async def test_a_page_ends_before_the_event_that_would_pass_read_page_max_bytes(make_client, db) -> None:
    reader = await make_client(api_tokens=(ReadToken(TOKEN, None),), read_page_max_bytes=2500)
    ids = [await post(reader, body_of(1000, n)) for n in range(7)]
    # 2 x 1000 bytes fit in 2500, a third would not: pages of two, whatever the limit ...
    assert await pages(reader, limit=1000) == [ids[0:2], ids[2:4], ids[4:6], ids[6:7]]
    # ... and the limit still applies under the cap.
    assert await pages(reader, limit=1) == [[i] for i in ids]


async def test_an_event_larger_than_the_cap_comes_alone(make_client, db) -> None:
    reader = await make_client(api_tokens=(ReadToken(TOKEN, None),), read_page_max_bytes=1500)
    small, large, small_too = body_of(500, 0), body_of(4000, 1), body_of(500, 2)
    ids = [await post(reader, b) for b in (small, large, small_too)]
    assert await pages(reader, limit=1000) == [[ids[0]], [ids[1]], [ids[2]]]
    _, _, first = await get(reader, limit=1000)
    status, _, alone = await get(reader, limit=1000, after=first["next_cursor"])
    assert status == 200 and [base64.b64decode(e["body_base64"]) for e in alone["events"]] == [large]  # whole


async def test_the_database_sends_no_body_past_the_cap(db) -> None:
    # The cut is made in SQL: rows past the cap come without their bodies
    # (NULL), so large bodies are neither read from storage nor sent to the
    # worker; storage/delivery.py ends the page at the first such row.
    sizes = [3000, 3000, 3000, 3000, 50]
    for n, size in enumerate(sizes):
        body = body_of(size, n)
        await db.execute(
            "INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body) "
            "VALUES ('shop-a', 'orders', $1, sha256($2::bytea), $2::bytea)", f"k{n}", body)
    statement = load_queries().sql("read_events")
    # $1 tenant_id, $2 source, $3 after xact, $4 after id, $5 limit, $6 most bytes of bodies
    rows = await db.fetch(statement, "shop-a", None, "0", 0, 1000, 7000)
    assert [r["body"] is not None for r in rows] == [True, True, False, False, False]
    rows = await db.fetch(statement, "shop-a", None, "0", 0, 1000, 10)
    assert [r["body"] is not None for r in rows] == [True, False, False, False, False]
    rows = await db.fetch(statement, "shop-a", None, "0", 0, 1000, None)  # no cap: export-like
    assert all(r["body"] is not None for r in rows)


@pytest.fixture
async def large_bodies(database_url: str):
    """120 events of 1 MB for a tenant of their own, seeded by SQL; deleted afterwards."""
    conn = await asyncpg.connect(database_url)
    await conn.execute(
        "INSERT INTO events (tenant_id, source, idempotency_key, body_sha256, body, content_type) "
        "SELECT 'large-bodies', 'orders', 'k' || g, sha256(b.body), b.body, 'application/json' "
        "FROM generate_series(1, 120) g, "
        "LATERAL (SELECT convert_to('{\"n\":' || g || ',\"p\":\"' || repeat('x', 1000000) || '\"}', 'UTF8') AS body) b")
    try:
        yield "large-bodies"
    finally:
        await conn.execute("DELETE FROM events WHERE tenant_id = 'large-bodies'")
        await conn.close()


def status_kb(pid: int, name: str) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(name + ":"))
    return int(line.split()[1])


def test_a_page_over_large_bodies_costs_the_worker_about_the_cap_in_memory(database_url: str, large_bodies: str) -> None:
    # 120 MB of bodies, limit=1000: a page of 8 (the 8 MiB default cap). The
    # figure is bench/attack_readers.py's; this bound is generous: a page of
    # all 120 costs the worker several hundred MB.
    with live_service.serve(database_url, CODEX_API_TOKENS=f"{READ_TOKEN}=*") as svc:
        pid = svc.process.pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := RSS now
        before = status_kb(pid, "VmRSS")
        request = urllib.request.Request(f"{svc.url}/events?tenant={large_bodies}&limit=1000",
                                         headers=bearer(READ_TOKEN))
        with urllib.request.urlopen(request, timeout=120) as resp:
            page = orjson.loads(resp.read())
        grown_mb = (status_kb(pid, "VmHWM") - before) / 1024
    assert len(page["events"]) == 8
    assert grown_mb < 150, f"the worker's peak RSS grew by {grown_mb:.0f} MB for one page"


def test_an_export_of_large_bodies_streams_in_chunks_of_about_8_mib(database_url: str, large_bodies: str,
                                                                   tmp_path: Path) -> None:
    # export has no page cap (it streams every event), but it fetched 1000 rows
    # at a time: all 120 MB at once here (a peak RSS of 166 MB; 64 MB in chunks
    # sized by bytes). The peak is read from /proc while it runs (wait4's
    # ru_maxrss would count the memory of this process, which it was forked from).
    out = tmp_path / "export.ndjson"
    with out.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "codex_ingest", "export", "--tenant", large_bodies],
                                env={**BASE_ENV, "DATABASE_URL": database_url}, stdout=sink)
        peak_kb = 0
        while proc.poll() is None:
            with contextlib.suppress(OSError, StopIteration, ValueError):
                peak_kb = max(peak_kb, status_kb(proc.pid, "VmHWM"))
            time.sleep(0.005)  # sampling: VmHWM only grows, the last sample is close to the peak
    with out.open("rb") as lines:
        assert (proc.returncode, sum(1 for _ in lines)) == (0, 120)
    assert peak_kb / 1024 < 120, f"export's peak RSS was {peak_kb / 1024:.0f} MB"


# -- B. readers waiting at the head ------------------------------------------------------------


@pytest.mark.parametrize("most", [0, 1])
async def test_past_read_max_waiting_a_read_is_answered_at_once_with_retry_after(make_client, db, most) -> None:
    reader = await make_client(api_tokens=(ReadToken(TOKEN, None),), read_max_waiting=most)
    _, _, first = await get(reader)
    cursor = first["next_cursor"]
    async with in_background(get(reader, after=cursor, wait=30)) as holder:
        if most:
            await until(lambda: readers_waiting(reader), "the first reader to wait at the head")
        async with in_background(get(reader, after=cursor, wait=30)) as late:
            # The late reader is answered, not parked: it never joins the waiting readers.
            await until(_answered_or_parked(reader, late, most), "the reader past the cap to be answered or parked")
            assert late.done(), "the reader past READ_MAX_WAITING was parked at the head"
            status, answer_headers, page = late.result()
        # As a wait that ran out unwoken, at once; Retry-After: come back when it would have.
        assert (status, page["events"]) == (200, []) and Cursor.decode(page["next_cursor"]) == Cursor.decode(cursor)
        assert answer_headers["Retry-After"] == "30" and answer_headers["Cache-Control"] == "no-store"
        if most:
            # The one holding a place is still served as before: woken by the next event.
            assert not holder.done()
            event_id = await post(reader, body_of(100, 1))
            status, answer_headers, page = await holder
            assert [e["event_id"] for e in page["events"]] == [event_id] and "Retry-After" not in answer_headers
        else:
            assert (await holder)[1]["Retry-After"] == "30"
    await until(_none_waiting(reader), "no reader left waiting")


async def test_woken_readers_read_again_a_few_at_a_time_leaving_the_pool_to_writes(make_client, db) -> None:
    # Six readers wait; a write wakes them all; each reads again, and here that
    # read blocks (purge_horizons is locked), holding its pool connection. The
    # pool has four: if every woken reader took one, the next write would find
    # none and answer 503 after DB_CONNECT_TIMEOUT. Two at a time, it gets one.
    reader = await make_client(api_tokens=(ReadToken(TOKEN, None),), db_pool_max=4, db_connect_timeout=3.0)
    _, _, first = await get(reader)
    readers = [in_background(get(reader, after=first["next_cursor"], wait=30)) for _ in range(6)]
    tasks = [await r.__aenter__() for r in readers]
    try:
        await until(_waiting_is(reader, 6), "six readers waiting at the head")
        async with db.transaction():
            await db.execute("LOCK TABLE purge_horizons IN ACCESS EXCLUSIVE MODE")
            await post(reader, body_of(100, 1), tenant="shop-b")  # wakes them; nothing for shop-a
            await until(_blocked_reads(db, 2), "woken readers to read again, and block")
            resp = await reader.post("/pos/orders/ingest", data=body_of(100, 2),
                                     headers=headers(body_of(100, 2), tenant="shop-b"))
            assert resp.status == 201, await resp.text()
            assert await _blocked_count(db) == 2
        assert not any(t.done() for t in tasks)  # back to waiting: nothing came for shop-a
    finally:
        for r in readers:
            await r.__aexit__(None, None, None)


async def _blocked_count(db) -> int:
    """Sessions waiting for a lock on purge_horizons. From pg_locks, not pg_stat_activity's query text:
    a read blocked while its statement is being prepared (asyncpg's Parse) still shows the BEGIN before it."""
    return await db.fetchval(
        "SELECT count(*) FROM pg_locks AS l JOIN pg_class AS c ON c.oid = l.relation"
        " WHERE NOT l.granted AND c.relname = 'purge_horizons' AND l.database = ("
        "SELECT oid FROM pg_database WHERE datname = current_database())")


def _blocked_reads(db, at_least: int):
    async def check() -> bool:
        return await _blocked_count(db) >= at_least

    return check


def _waiting_is(reader, count: int):
    async def check() -> bool:
        return await readers_waiting(reader) == count

    return check


def _answered_or_parked(reader, task, most: int):
    async def check() -> bool:
        return task.done() or await readers_waiting(reader) > most

    return check


def _none_waiting(reader):
    async def check() -> bool:
        return await readers_waiting(reader) == 0

    return check


# -- D. the cursor -------------------------------------------------------------------------------


def cursor_text(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize("raw", [
    "99999999999999999999:1",            # 20 digits, over xid8
    f"{XID8_MAX + 1}:1",                 # one over xid8
    f"1:{BIGINT_MAX + 1}",               # one over bigint
    f"1:{'9' * 19}",                     # 19 digits, over bigint
])
async def test_a_cursor_out_of_its_sql_types_range_is_invalid_cursor(make_client, db, raw: str) -> None:
    reader = await make_client(api_tokens=(ReadToken(TOKEN, None),))
    status, _, doc = await get(reader, after=cursor_text(raw))
    assert (status, doc["error"]) == (400, "invalid_cursor"), doc
    assert doc["detail"]
    # The largest cursor the types hold is read (and is past everything).
    largest = cursor_text(f"{XID8_MAX}:{BIGINT_MAX}")
    status, _, page = await get(reader, after=largest)
    assert (status, page["events"]) == (200, [])
    # The same position, stamped by this read (Cursor compares positions).
    assert Cursor.decode(page["next_cursor"]) == Cursor(XID8_MAX, BIGINT_MAX)


# Text that may decode to a cursor: the numbers' digits from every script, any length.
numbers = st.text(st.characters(categories=("Nd", "No")) | st.sampled_from("0123456789"), min_size=0, max_size=24)
raw_cursors = st.builds(lambda a, sep, b: f"{a}{sep}{b}", numbers, st.sampled_from([":", ":", "::", " :", ""]), numbers)


@given(text=st.text(max_size=80) | raw_cursors.map(cursor_text) | st.integers(0, 2**70).map(lambda n: cursor_text(f"{n}:{n}")))
@settings(max_examples=2000, deadline=None)
def test_the_cursor_decoder_gives_an_in_range_cursor_or_invalid_cursor(text: str) -> None:
    try:
        cursor = Cursor.decode(text)
    except InvalidParameter as exc:
        assert exc.code == "invalid_cursor" and exc.status == 400
        return
    assert 0 <= cursor.xact <= XID8_MAX and 0 <= cursor.id <= BIGINT_MAX


@given(xact=st.integers(0, 2**66), id_=st.integers(0, 2**65))
@settings(max_examples=1000, deadline=None)
def test_a_cursor_decodes_exactly_when_its_numbers_fit_their_sql_types(xact: int, id_: int) -> None:
    text = cursor_text(f"{xact}:{id_}")
    if xact <= XID8_MAX and id_ <= BIGINT_MAX:
        assert Cursor.decode(text) == Cursor(xact, id_)
        # Given out, a cursor carries its read's stamp too; a cursor without one reads as stamp 0.
        assert Cursor(xact, id_).encode() == cursor_text(f"{xact}:{id_}:0") and Cursor.decode(text).stamp == 0
    else:
        with pytest.raises(InvalidParameter) as refused:
            Cursor.decode(text)
        assert refused.value.code == "invalid_cursor"


@given(xact=st.integers(0, 2**64 + 5), id_=st.integers(0, 2**63 + 5), stamp=st.integers(0, 2**64 + 5))
@settings(max_examples=300, deadline=None)
def test_a_stamped_cursor_decodes_exactly_when_its_stamp_fits_xid8(xact: int, id_: int, stamp: int) -> None:
    text = cursor_text(f"{xact}:{id_}:{stamp}")
    if xact <= XID8_MAX and id_ <= BIGINT_MAX and stamp <= XID8_MAX:
        decoded = Cursor.decode(text)
        assert (decoded.xact, decoded.id, decoded.stamp) == (xact, id_, stamp) and decoded.encode() == text
    else:
        with pytest.raises(InvalidParameter):
            Cursor.decode(text)


@given(raw=raw_cursors | st.tuples(st.integers(0, 2**66), st.integers(0, 2**65)).map(lambda p: f"{p[0]}:{p[1]}"))
@settings(max_examples=150, deadline=None)
def test_any_after_is_answered_200_or_invalid_cursor_by_the_service(live, raw: str) -> None:
    request = urllib.request.Request(f"{live.url}/events?" + urlencode({"tenant": "fuzz-cursor", "after": cursor_text(raw)}),
                                     headers=bearer(READ_TOKEN))
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            status, doc = resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        status, doc = exc.code, orjson.loads(exc.read())
    assert status in (200, 400), (status, doc)
    if status == 400:
        assert doc["error"] == "invalid_cursor", doc
