"""Read events from codex-ingest with GET /events, exactly as a real consumer
should: follow next_cursor, save it only after a page is handled, resume from
it, wait at the head with long-polls. Without --tenant it reads the combined
feed: every tenant the token may read, in one order; with --tenant, that
tenant alone.

    CODEX_READ_TOKEN=reader-token-0123456789 .venv/bin/python examples/consumer.py \
        --url http://127.0.0.1:8080

Standard library only. handle() sends each event, with its tenant, to the
handler of its topic: replace those handlers with your own work.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

RETRY_STATUSES = {502, 503, 504}  # the database or a proxy is briefly away: the same read will work later
MAX_BACKOFF_SECONDS = 30.0
# Headers that name an event's topic, first found first: Shopify's, then one a
# sources file may keep (headers = ["X-Event-Type"]). Most providers (Square,
# Stripe, Standard Webhooks) name it in the body's "type" instead.
TOPIC_HEADERS = ("x-shopify-topic", "x-event-type")


class Stop(BaseException):
    """SIGINT/SIGTERM while waiting; a BaseException so no `except Exception` swallows it."""


class Fatal(Exception):
    """An answer that retrying will not change: exit with this message."""


# -- Replace these with your own work. ------------------------------------------
# Each gets the event's tenant, its topic, the event (as GET /events shows it)
# and its body decoded. Delivery is at least once: after a crash the last
# unsaved page comes again, so real work must tolerate a repeat (event_id is unique).

def order_placed(tenant: str, topic: str, event: dict[str, Any], body: Any) -> None:
    done("order_placed", tenant, topic, event)


def order_changed(tenant: str, topic: str, event: dict[str, Any], body: Any) -> None:
    done("order_changed", tenant, topic, event)


def payment(tenant: str, topic: str, event: dict[str, Any], body: Any) -> None:
    done("payment", tenant, topic, event)


def refund(tenant: str, topic: str, event: dict[str, Any], body: Any) -> None:
    done("refund", tenant, topic, event)


def other(tenant: str, topic: str, event: dict[str, Any], body: Any) -> None:
    done("other", tenant, topic, event)


Handler = Callable[[str, str, dict[str, Any], Any], None]
HANDLERS: dict[str, Handler] = {
    "order.created": order_placed,             # the quick start's generic source: the body's "type"
    "orders/create": order_placed,             # Shopify: X-Shopify-Topic
    "orders/updated": order_changed,
    "refunds/create": refund,
    "payment.updated": payment,                # Square
    "payment_intent.succeeded": payment,       # Stripe
}


def done(handler: str, tenant: str, topic: str, event: dict[str, Any]) -> None:
    """What a handler did: here, one JSON line on stdout."""
    print(json.dumps({"tenant_id": tenant, "source": event["source"], "topic": topic,
                      "idempotency_key": event["idempotency_key"], "handler": handler}, ensure_ascii=False))

# --------------------------------------------------------------------------------


def handle(event: dict[str, Any]) -> None:
    """One event: its topic's handler (other() for a topic not in HANDLERS), with its tenant."""
    raw = base64.b64decode(event["body_base64"])  # the exact bytes the provider sent
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode("utf-8", "replace")
    topic = topic_of(event.get("headers") or {}, body)  # headers is null for events stored before they were kept
    HANDLERS.get(topic, other)(event["tenant_id"], topic, event, body)


def topic_of(headers: dict[str, str], body: Any) -> str:
    """A topic header's value, else the body's "type", else "unknown"."""
    for name in TOPIC_HEADERS:
        if headers.get(name):
            return headers[name]
    kind = body.get("type") if isinstance(body, dict) else None
    return kind if isinstance(kind, str) and kind else "unknown"


def read_of(args: argparse.Namespace) -> str:
    """Which read a cursor belongs to ("feed", "tenant=<name>"): a cursor continues only the read it came from."""
    return f"tenant={args.tenant}" if args.tenant else "feed"


def load_cursor(path: Path, read: str) -> str | None:
    """The cursor ``path`` keeps for ``read`` ("<read> <cursor>"); None on a first run: start at the oldest event."""
    try:
        found, _, cursor = path.read_text(encoding="ascii").strip().rpartition(" ")
    except FileNotFoundError:
        return None
    # A cursor alone is one tenant's: this example saved no more before it read the combined feed.
    if found != read and (found or read == "feed"):
        kept = describe(found) if found else "a one-tenant read"
        raise Fatal(f"{path} keeps the cursor of {kept}, not of {describe(read)}: a cursor continues only the "
                    f"read it came from. Give each read a --cursor-file of its own.")
    return cursor or None


def describe(read: str) -> str:
    return "the combined feed (no --tenant)" if read == "feed" else f"a read of tenant {read.removeprefix('tenant=')}"


def save_cursor(path: Path, read: str, cursor: str) -> None:
    # Write a temporary file and rename it over the old one: a crash leaves
    # either the old cursor or the new one, never half of one.
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{read} {cursor}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


_stopping = False
_interruptible = False


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """A wait (network or sleep) that a signal may cut short: nothing is lost
    there. Elsewhere a signal only asks the loop to stop after the page."""
    global _interruptible
    if _stopping:
        raise Stop
    _interruptible = True
    try:
        yield
    finally:
        _interruptible = False


def on_signal(signum: int, frame: object) -> None:
    global _stopping
    _stopping = True
    if _interruptible:
        raise Stop


def fetch_page(args: argparse.Namespace, token: str, cursor: str | None) -> tuple[dict[str, Any], float]:
    """One GET /events and the seconds its Retry-After asks to wait before the next (0: none);
    retries what may pass, raises Fatal for what will not."""
    params: dict[str, Any] = {"limit": args.limit, "wait": args.wait}
    if args.tenant:
        params["tenant"] = args.tenant  # else the combined feed
    if args.source:
        params["source"] = args.source
    if cursor:
        params["after"] = cursor
    request = urllib.request.Request(
        f"{args.url.rstrip('/')}/events?{urllib.parse.urlencode(params)}",
        headers={"Authorization": f"Bearer {token}"},
    )
    backoff = 1.0
    while True:
        delay = None
        try:
            with interruptible(), urllib.request.urlopen(request, timeout=args.wait + 15) as answer:
                # An empty page with Retry-After: the service has as many readers waiting
                # as it allows, and asks this one to come back later rather than at once.
                later = answer.headers.get("Retry-After")
                return json.load(answer), float(later) if later and later.isdigit() else 0.0
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRY_STATUSES:
                raise Fatal(explain(exc, args)) from None
            problem = f"{exc.code} {error_of(exc)[0]}"
            delay = exc.headers.get("Retry-After")
        except (OSError, http.client.HTTPException, ValueError) as exc:  # refused, reset, timed out, cut off
            problem = f"cannot read {args.url}: {exc}"
        pause = float(delay) if delay and delay.isdigit() else backoff
        print(f"consumer: {problem}; retrying in {pause:g} s", file=sys.stderr)
        with interruptible():
            time.sleep(pause)
        backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)


def error_of(exc: urllib.error.HTTPError) -> tuple[str, str]:
    """The service's {"error", "detail"} (a proxy may have answered something else)."""
    try:
        doc = json.load(exc)
        return str(doc.get("error", "")), str(doc.get("detail", ""))
    except (ValueError, AttributeError, OSError, http.client.HTTPException):
        return "", str(exc.reason)


def explain(exc: urllib.error.HTTPError, args: argparse.Namespace) -> str:
    code, detail = error_of(exc)
    if exc.code == 401:
        return "401 unauthorized: CODEX_READ_TOKEN is not one of the service's CODEX_API_TOKENS"
    if exc.code == 403 and args.tenant:
        return f"403 forbidden: this token may not read tenant {args.tenant!r} (see its tenants in CODEX_API_TOKENS)"
    if exc.code == 404:
        return "404: reading is off on this service (no CODEX_API_TOKENS), or --url is not codex-ingest"
    if exc.code == 410:
        return (f"410 {code}: events after the cursor in {args.cursor_file} were deleted by the service's "
                f"RETENTION before this consumer read them; they cannot be read any more. To go on from the oldest "
                f"event still kept, accepting the gap, delete {args.cursor_file} and start again. Then keep the "
                f"consumer running, or RETENTION longer, so that it does not fall that far behind again.")
    if code == "invalid_cursor":
        return f"400 invalid_cursor: {detail} (the cursor in {args.cursor_file})"
    return f"{exc.code} {code}: {detail}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="The token comes from CODEX_READ_TOKEN only: a flag would show in ps.")
    parser.add_argument("--url", default=os.environ.get("CODEX_URL", "http://127.0.0.1:8080"),
                        help="the service (default: CODEX_URL, else http://127.0.0.1:8080)")
    parser.add_argument("--tenant", default=os.environ.get("CODEX_TENANT") or None,
                        help="read this tenant alone (default: CODEX_TENANT, else the combined feed of every tenant "
                             "the token may read)")
    parser.add_argument("--source", help="only this source's events")
    parser.add_argument("--cursor-file", type=Path,
                        help="where the cursor is kept (default: ./feed.cursor, or ./<tenant>.cursor with --tenant)")
    parser.add_argument("--limit", type=int, default=100, help="events per page, 1-1000 (default 100)")
    parser.add_argument("--wait", type=float, help="seconds a read waits at the head, 0-30 (default 25; 0 with --until-idle)")
    parser.add_argument("--until-idle", action="store_true", help="stop at the first empty page instead of waiting for more")
    args = parser.parse_args(argv)
    if args.cursor_file is None:
        args.cursor_file = Path(f"{args.tenant}.cursor" if args.tenant else "feed.cursor")
    if args.wait is None:
        args.wait = 0.0 if args.until_idle else 25.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    token = os.environ.get("CODEX_READ_TOKEN")
    if not token:
        print("consumer: set CODEX_READ_TOKEN to a token of the service's CODEX_API_TOKENS", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    read = read_of(args)
    try:
        cursor = load_cursor(args.cursor_file, read)
        while not _stopping:
            page, later = fetch_page(args, token, cursor)
            for event in page["events"]:
                handle(event)
            sys.stdout.flush()  # handled means written out, before the cursor moves past it
            if page["next_cursor"] != cursor:
                cursor = page["next_cursor"]
                save_cursor(args.cursor_file, read, cursor)  # after handling: a crash re-reads, never skips
            if args.until_idle and not page["events"]:
                break
            if later and not page["events"]:
                with interruptible():
                    time.sleep(later)
    except Stop:
        pass
    except Fatal as exc:
        print(f"consumer: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
