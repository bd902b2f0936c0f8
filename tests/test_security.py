"""Security: secrets and bodies never logged, constant-time comparisons, tenant isolation."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
import urllib.parse
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from bench.local import free_port
from bench.service import Service
from codex_ingest.storage import migrations
from tests import pg
from tests.cli import ROOT, run_cli
from tests.helpers import headers, sign

# The write path: batched and direct writes must each keep these promises.
pytestmark = pytest.mark.both_write_paths

PACKAGE = ROOT / "codex_ingest"


# -- nothing secret in the logs -------------------------------------------------------


def secret_forms(secret: str) -> list[str]:
    raw = secret.encode()
    return [
        secret,
        raw.hex(),
        raw.hex().upper(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        urllib.parse.quote(secret, safe=""),
    ]


def with_password(url: str, password: str) -> str:
    # The embedded server trusts local connections and ignores it; the URL still carries it.
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:{password}@{host}"))


def raw_http(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(data)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_no_secret_password_signature_or_body_ever_reaches_the_logs_even_at_debug(
    own_server: pg.EmbeddedServer, tmp_path: Path
) -> None:
    secret = f"whsec-{uuid.uuid4().hex}"
    password = f"pw-{uuid.uuid4().hex}"
    # Providers' secrets from a sources file: from the environment and literal.
    provider_secrets = {name: f"{name}-{uuid.uuid4().hex}" for name in ("shop", "clover", "kiosk")}
    provider_secrets["stripe"] = f"whsec_{uuid.uuid4().hex}"
    sources = tmp_path / "sources.toml"
    stripe_secret, kiosk_secret = provider_secrets["stripe"], provider_secrets["kiosk"]
    sources.write_text(
        '[sources.shopify]\nscheme = "shopify"\nsecrets = ["env:SHOP_SECRET"]\n'
        '[sources.clover]\nscheme = "clover"\nsecrets = ["env:CLOVER_CODE"]\n'
        f'[sources.stripe]\nscheme = "stripe"\nsecrets = ["{stripe_secret}"]\n'
        f'[sources.kiosk]\nscheme = "hmac-sha256"\nsecrets = ["{kiosk_secret}"]\n'
    )
    url = own_server.url("postgres")
    migrations.apply_all(url)
    marker = uuid.uuid4().hex  # in every body sent; must never be logged
    service = Service(
        with_password(url, password), free_port(), secret, tmp_path / "serve.log", workers=2,
        env={"LOG_LEVEL": "DEBUG", "ACCESS_LOG": "on", "MAX_BODY_BYTES": "4096", "CODEX_SOURCES": str(sources),
             "SHOP_SECRET": provider_secrets["shop"], "CLOVER_CODE": provider_secrets["clover"],
             "DB_CONNECT_TIMEOUT": "1", "DB_COMMAND_TIMEOUT": "2", "DB_WRITE_TIMEOUT": "3"},
    )
    signatures: list[str] = []
    statuses: list[int] = []

    def body(n: int | str) -> bytes:
        return f'{{"marker":"{marker}","n":"{n}"}}'.encode()

    def signed(data: bytes, key: str = secret, **extra: str) -> dict[str, str]:
        signature = sign(data, key)
        signatures.append(signature.removeprefix("sha256="))
        return {"Content-Type": "application/json", "X-Tenant-Id": "t-1", "X-Signature": signature, **extra}

    async def post(session: aiohttp.ClientSession, data: bytes, hdrs: dict[str, str]) -> None:
        await post_to(session, "square", data, hdrs)

    async def post_to(session: aiohttp.ClientSession, source: str, data: bytes, hdrs: dict[str, str]) -> None:
        async with session.post(f"{service.base_url}/pos/{source}/ingest", data=data, headers=hdrs) as resp:
            await resp.read()
            statuses.append(resp.status)

    try:
        await asyncio.to_thread(service.start)
        async with aiohttp.ClientSession() as session:
            await post(session, body(1), signed(body(1), **{"Idempotency-Key": "k1"}))          # 201
            await post(session, body(1), signed(body(1), **{"Idempotency-Key": "k1"}))          # 200
            await post(session, body(2), signed(body(2), **{"Idempotency-Key": "k1"}))          # 422
            await post(session, body(3), signed(body(3), key="not-the-secret"))                 # 401
            await post(session, body(4), signed(body(5)))                                       # 401
            await post(session, body(6), {"Content-Type": "application/json", "X-Tenant-Id": "t-1",
                                          "X-Signature": "sha256=" + secret})                      # 401
            invalid = f'{{"marker":"{marker}",'.encode()
            await post(session, invalid, signed(invalid))                                       # 400
            await post(session, body(7), signed(body(7), **{"X-Tenant-Id": "../etc"}))          # 400
            large = body("x" * 5000)
            await post(session, large, signed(large))                                           # 413
            await post(session, body(8), {**signed(body(8)), "Content-Type": "text/plain"})     # 415
            # Declared sources: a good one, and a wrong signature in each scheme's own header.
            kiosk = body("kiosk")
            await post_to(session, "kiosk", kiosk, signed(kiosk, key=provider_secrets["kiosk"]))        # 201
            for source, header, value in [
                ("kiosk", "X-Signature", sign(body(11), "wrong")),
                ("shopify", "X-Shopify-Hmac-Sha256", "bm90LXRoZS1obWFj"),
                ("stripe", "Stripe-Signature", f"t={int(time.time())},v1={'0' * 64}"),
                ("clover", "X-Clover-Auth", "not-the-code"),
            ]:
                await post_to(session, source, body(11), {"Content-Type": "application/json",
                                                          "X-Tenant-Id": "t-1", header: value})  # 401 x 4
            answer = raw_http(service.port, f"POST /pos/square/ingest HTTP/1.1\r\nHost: x\r\nX-Bad\x01: {marker}\r\n"
                              f"Transfer-Encoding: chunked\r\n\r\nzz\r\n{marker}\r\n".encode())
            assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), answer[:80]

            await asyncio.to_thread(own_server.stop, "immediate")
            await post(session, body(9), signed(body(9)))                                       # 503
            async with session.get(f"{service.base_url}/readyz") as resp:
                statuses.append(resp.status)                                                    # 503
            await asyncio.to_thread(own_server.start)
            for _ in range(100):  # back: each worker's pool reconnects on its own
                async with session.post(f"{service.base_url}/pos/square/ingest", data=body(10),
                                        headers=signed(body(10))) as resp:
                    if resp.status != 503:
                        break
                await asyncio.sleep(0.1)
            statuses.append(resp.status)                                                        # 201 (200)
        assert await asyncio.to_thread(service.terminate) == 0
    finally:
        service.cleanup()
    assert statuses[:-1] == [201, 200, 422, 401, 401, 401, 400, 400, 413, 415, 201, 401, 401, 401, 401, 503, 503]
    assert statuses[-1] in (200, 201)  # 200 if an attempt answered 503 had committed after all

    # Start-up failures print what they say before the service runs: the secret and the
    # password are in their input too.
    database = with_password(url, password)
    refused = with_password("postgresql://127.0.0.1:1/x", password)
    failures = [
        run_cli("serve", "--port", "x", env={"WEBHOOK_SECRET": secret, "DATABASE_URL": database}),
        run_cli("serve", "--webhook-secret", secret, "--db-pool-max", "0", env={"DATABASE_URL": database}),
        run_cli("serve", "--webhook-secret", secret, "--database-url", "mysql://u:" + password + "@h/x"),
        run_cli("serve", "--no-migrate", "--port", str(free_port()), env={
            "WEBHOOK_SECRET": secret, "DATABASE_URL": refused, "LOG_LEVEL": "DEBUG", "DB_CONNECT_TIMEOUT": "2"}),
    ]
    assert [f.returncode for f in failures] == [2, 2, 2, 1]

    log = service.log_path.read_text() + "".join(f.stdout + f.stderr for f in failures)
    assert '"msg":"request"' in log and '"status":503' in log  # DEBUG and access lines were written
    for form in [f for s in (secret, password, *provider_secrets.values()) for f in secret_forms(s)]:
        assert form not in log, f"a form of a secret is in the logs: {form}"
    assert marker not in log, "a request body (or a header) reached the logs"
    for signature in signatures:
        assert signature not in log and signature.upper() not in log


# -- constant-time comparisons ---------------------------------------------------------

# Constant-time comparison is checked in tests/intake/test_signatures.py: by behaviour (a spy on
# compare_digest for every scheme) and by syntax (no ==, !=, in or __eq__ on secret-like names).


# -- tenant isolation --------------------------------------------------------------------

URL = "/pos/square/ingest"


async def test_same_source_and_key_under_two_tenants_are_two_events_neither_revealing_the_other(
    client: TestClient, db: asyncpg.Connection
) -> None:
    a_body, b_body = b'{"tenant":"A","secret":"a-only"}', b'{"tenant":"B","secret":"b-only"}'
    key = {"Idempotency-Key": "order-1"}
    a = await client.post(URL, data=a_body, headers=headers(a_body, tenant="tenant-a", **key))
    b = await client.post(URL, data=b_body, headers=headers(b_body, tenant="tenant-b", **key))
    assert (a.status, b.status) == (201, 201)
    a_id, b_id = (await a.json())["event_id"], (await b.json())["event_id"]
    assert a_id != b_id

    # A's retry is A's duplicate; A reusing the key with B's body conflicts with A's own event only.
    again = await client.post(URL, data=a_body, headers=headers(a_body, tenant="tenant-a", **key))
    assert again.status == 200 and (await again.json())["event_id"] == a_id
    crossed = await client.post(URL, data=b_body, headers=headers(b_body, tenant="tenant-a", **key))
    assert crossed.status == 422
    for resp in (a, again, crossed):
        assert "b-only" not in await resp.text()
        assert (await resp.json()).get("event_id", a_id) == a_id  # never B's id

    rows = await db.fetch("SELECT tenant_id, body FROM events ORDER BY id")
    assert [(r["tenant_id"], bytes(r["body"])) for r in rows] == [("tenant-a", a_body), ("tenant-b", b_body)]


async def test_identical_bodies_from_two_tenants_in_one_batch_are_two_events(
    client: TestClient, db: asyncpg.Connection
) -> None:
    # No Idempotency-Key: the key is the body's digest, still scoped by tenant. Sent together,
    # so with batching on they share a batch.
    body = b'{"type":"payment.created","id":"same-everywhere"}'
    answers = await asyncio.gather(
        *(client.post(URL, data=body, headers=headers(body, tenant=t)) for t in ("t-a", "t-b", "t-a", "t-b"))
    )
    docs = [await r.json() for r in answers]
    assert sorted(r.status for r in answers) == [200, 200, 201, 201]
    ids = {t: {d["event_id"] for d, tt in zip(docs, ("t-a", "t-b", "t-a", "t-b"), strict=True) if tt == t}
           for t in ("t-a", "t-b")}
    assert len(ids["t-a"]) == 1 and len(ids["t-b"]) == 1 and ids["t-a"] != ids["t-b"]
    assert await db.fetchval("SELECT count(*) FROM events") == 2
