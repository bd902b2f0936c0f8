"""JSON responses, built the same way everywhere."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

# On every response: no versions for a scanner to match against (aiohttp
# would send "Python/3.11 aiohttp/3.x"), and no content sniffing by browsers.
RESPONSE_HEADERS = {"Server": "codex-ingest", "X-Content-Type-Options": "nosniff"}


def json_response(
    payload: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload), status=status, headers=headers, content_type="application/json"
    )


def error_response(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return json_response({"error": code, "detail": detail}, status=status, headers=headers)
