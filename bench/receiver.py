"""A destination for the benches: a bare aiohttp server on uvloop, in a process of its own.

    python -m bench.receiver --port PORT --secret whsec_...

``POST /ok`` checks the Standard Webhooks signature (its own HMAC, no library
in the way), notes the ``webhook-id`` and the arrival time (``time.time()``,
the same clock the bench's load generator reads) and answers 204.
``POST /hang`` never answers. ``GET /arrivals?from=N`` answers the arrivals
noted from the N-th on, as ``{"count": total, "bad": unsigned, "arrivals":
[[webhook-id, unix seconds], ...]}``. Nothing is kept but those pairs, so
its CPU per request is what a lean receiver spends.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import time

import orjson

HANG_SECONDS = 3600.0


def serve(port: int, secret: str) -> None:
    import uvloop
    from aiohttp import web

    key = base64.b64decode(secret.removeprefix("whsec_"))
    arrivals: list[tuple[str, float]] = []
    bad = 0

    async def ok(request: web.Request) -> web.Response:
        nonlocal bad
        body = await request.read()
        at = time.time()
        msg_id = request.headers.get("webhook-id", "")
        signed = f"{msg_id}.{request.headers.get('webhook-timestamp', '')}.".encode() + body
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        offered = [part.split(",", 1)[-1] for part in request.headers.get("webhook-signature", "").split()]
        if not any(hmac.compare_digest(expected, candidate) for candidate in offered):
            bad += 1
        arrivals.append((msg_id, at))
        return web.Response(status=204)

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(HANG_SECONDS)
        return web.Response(status=204)

    async def listing(request: web.Request) -> web.Response:
        start = int(request.query.get("from", "0"))
        return web.Response(body=orjson.dumps({"count": len(arrivals), "bad": bad, "arrivals": arrivals[start:]}),
                            content_type="application/json")

    app = web.Application()
    app.router.add_post("/ok", ok)
    app.router.add_post("/hang", hang)
    app.router.add_get("/arrivals", listing)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, shutdown_timeout=0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True, help="the destination's whsec_ secret")
    args = parser.parse_args(argv)
    serve(args.port, args.secret)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
