"""What is stored of Content-Type (issue 18, C): the media type and its charset,
lower case, nothing else the sender wrote; a media type that is not a JSON
one by its own grammar is 415, for single events and batches alike."""

from __future__ import annotations

import pytest

from tests.helpers import assert_error, headers, stored

URL = "/pos/orders/ingest"


async def test_only_the_media_type_and_charset_are_stored(client, db) -> None:
    sent = {
        "k-script": 'application/x+json; x="<script>alert(1)</script>"',
        "k-mixed": 'Application/JSON; Charset="UTF-8"; boundary=----x',
        "k-vnd": "application/vnd.api+json;profile=https://evil.example/",
        "k-bad-charset": "application/json; charset=<b>utf-8</b>",
        "k-plain": "application/json",
        "k-absent": None,
    }
    for key, content_type in sent.items():
        body = b'{"key":"%s"}' % key.encode()
        h = headers(body, **{"Idempotency-Key": key})
        if content_type is None:
            del h["Content-Type"]
        else:
            h["Content-Type"] = content_type
        # Without a Content-Type, aiohttp's client would add application/octet-stream.
        resp = await client.post(URL, data=body, headers=h, skip_auto_headers=["Content-Type"])
        assert resp.status == 201, (content_type, await resp.text())
    assert {r["idempotency_key"]: r["content_type"] for r in await stored(db)} == {
        "k-script": "application/x+json",
        "k-mixed": "application/json; charset=utf-8",
        "k-vnd": "application/vnd.api+json",
        "k-bad-charset": "application/json",  # not a charset's name: dropped (the body is UTF-8 JSON anyway)
        "k-plain": "application/json",
        "k-absent": None,
    }


@pytest.mark.parametrize("route", [URL, "/pos/orders/ingest/batch"])
@pytest.mark.parametrize("content_type", ["application/<script>+json", "application/+json", 'application/"x"+json'])
async def test_a_media_type_outside_the_grammar_is_415(client, db, route, content_type) -> None:
    body = b'[{"event_id":"x"}]'
    resp = await client.post(route, data=body, headers={**headers(body), "Content-Type": content_type})
    await assert_error(resp, 415, "unsupported_media_type")
    assert await stored(db) == []
