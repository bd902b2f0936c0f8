"""What every console answer carries, and which requests may change state.

Every answer: a Content-Security-Policy with no script at all (no inline,
no eval), nosniff, no-store, no referrer, and no framing. A POST (every
state change is one) is refused with 403 when the browser says it came from
another site (``Sec-Fetch-Site``), or, from a browser that does not say,
when its ``Origin`` is not this host: no token sits in a page for a script
to steal, and none is needed.
"""

from __future__ import annotations

import functools

from aiohttp import web

from codex_ingest.web.responses import error_response

SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
                                " frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_SAME_SITE = frozenset({"same-origin", "none"})  # "none": typed, or a bookmark


def same_origin(request: web.Request) -> bool:
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site in _SAME_SITE
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # neither header: not a browser's cross-site form (they send Origin on POST)
    scheme = "https" if served_over_https(request) else request.scheme
    return origin == f"{scheme}://{request.host}"


def served_over_https(request: web.Request) -> bool:
    """Whether the browser reached the console over https: directly, or through a proxy that
    ended TLS and said so in X-Forwarded-Proto (deploy/nginx sets it). Believing the header can
    only add ``Secure`` to the session cookie, never take it away: a client that claims https
    over plain http gets a cookie its own browser will not send back."""
    if request.secure:
        return True
    proto = request.headers.get("X-Forwarded-Proto", "")
    return proto.partition(",")[0].strip().lower() == "https"


def guarded(handler: web.Handler) -> web.Handler:
    """``handler`` with the security headers on every answer, and a cross-site POST refused.
    A wrapper, not a middleware: with none anywhere, aiohttp calls every handler directly."""

    async def guard(request: web.Request) -> web.StreamResponse:
        if request.method == "POST" and not same_origin(request):
            response: web.StreamResponse = error_response(403, "cross_site", "a console change must come from the console")
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # a redirect or an error page: the same headers
                exc.headers.update(SECURITY_HEADERS)
                raise
        response.headers.update(SECURITY_HEADERS)
        return response

    return functools.update_wrapper(guard, handler)
