"""Settings: one frozen dataclass, read once from flags and the environment.

Every setting is declared once in ``OPTIONS``; the CLI builds its flags from
that table and ``.env.example`` documents the same names, so the three cannot
drift apart. A flag wins over the environment, which wins over the default.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codex_ingest.delivery.config import parse_destinations
from codex_ingest.intake.sources import SourcesConfig, SourcesError, load_sources


class ConfigError(Exception):
    """A setting is missing or has a value the service cannot use."""


@dataclass(frozen=True, slots=True)
class ReadToken:
    """A bearer token of the read API and the tenants it may read (None: every tenant)."""

    token: str = field(repr=False)
    tenants: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class Settings:
    # repr=False: secrets and URLs with passwords must never reach a log line.
    webhook_secret: str = field(repr=False)
    database_url: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path(".codex-ingest/pgdata")
    migrate: bool = True
    db_pool_min: int = 2
    db_pool_max: int = 8
    db_connect_timeout: float = 5.0
    db_command_timeout: float = 5.0
    db_write_timeout: float = 10.0
    max_body_bytes: int = 1024 * 1024
    max_batch_bytes: int = 8 * 1024 * 1024
    batch_max_items: int = 1000
    retry_after_seconds: int = 5
    log_level: str = "INFO"
    access_log: bool = False
    metrics_remote_label: bool = False
    # GET /metrics needs "Authorization: Bearer <metrics_token>"; None: open.
    metrics_token: str | None = field(default=None, repr=False)
    metrics_cache_seconds: float = 1.0
    batching: bool = True
    batch_max_rows: int = 256
    batch_max_delay_ms: float = 1.0
    batch_max_in_flight: int = 2
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    sources: Path | None = None
    # The parsed sources file (holds resolved secrets); None: no sources file.
    source_table: SourcesConfig | None = field(default=None, repr=False)
    header_read_timeout: float = 10.0
    body_read_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    write_timeout: float = 30.0
    body_buffer_bytes: int = 64 * 1024 * 1024
    headers_max_bytes: int = 4096
    rate_limit_per_sec: float = 0.0
    rate_limit_burst: int = 10
    shutdown_grace_seconds: float = 10.0
    # Read API tokens; empty: GET /events is off (404).
    api_tokens: tuple[ReadToken, ...] = field(default=(), repr=False)
    retention: float | None = None  # seconds
    read_notify: bool = True
    read_page_max_bytes: int = 8 * 1024 * 1024
    read_max_waiting: int = 128
    # asyncpg's prepared-statement cache per connection; 0 behind PgBouncer in
    # transaction mode before 1.21 (it cannot follow named prepared statements).
    db_statement_cache_size: int = 100
    # Where the read side's LISTEN connection goes; None: database_url. A
    # direct PostgreSQL URL when database_url goes through a transaction pooler.
    listen_database_url: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its environment variable, its flag, how to parse it, and
    how it is documented. ``--help``, ``docs/configuration.md`` and
    ``.env.example`` are all rendered from these fields (cli/reference.py)."""

    attr: str
    env: str
    parse: Callable[[str], Any]
    help: str  # one line, for --help
    metavar: str = "VALUE"
    group: str = "Service"  # the heading it is listed under in the docs
    doc: str = ""  # the longer meaning for the docs and .env.example; empty: help
    default_text: str = ""  # the default in words, where Settings' own cannot say it
    example: str = ""  # the value .env.example shows, commented out, when there is no default to show

    @property
    def flag(self) -> str:
        return "--" + self.attr.replace("_", "-")

    @property
    def meaning(self) -> str:
        return self.doc or (self.help[:1].upper() + self.help[1:] + ".")

    @property
    def default(self) -> str:
        """The default as the docs and --help show it, read from Settings itself so it cannot drift."""
        if self.default_text:
            return self.default_text
        value = Settings.__dataclass_fields__[self.attr].default
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)


# -- numbers: ASCII digits only ---------------------------------------------------
# int() and float() also read other scripts' digits ('٣', full-width '３'), '_'
# separators, signs, exponents and Unicode spaces; str.isdigit() also says yes to
# '²' and '①', which int() then refuses. Every number the service reads (a
# setting, a query parameter, a cursor) goes through these two instead.

_DECIMAL = re.compile(r"[0-9]*\.?[0-9]+")


def parse_ascii_int(text: str, *, max_digits: int = 18) -> int:
    """``text`` as a whole number >= 0 written in the digits 0-9 and nothing else
    (no sign, space, '_' or other script's digit); ValueError otherwise.

    ``max_digits`` bounds the work and the value (18 digits fit a bigint)."""
    if not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        raise ValueError(f"must be a whole number: at most {max_digits} digits 0-9")
    return int(text)


def parse_ascii_decimal(text: str, *, max_chars: int = 18) -> float:
    """``text`` as a number >= 0 written in the digits 0-9 with at most one '.'
    (``5``, ``0.25``, ``.5``; no sign, exponent, space, 'nan' or 'inf'); ValueError otherwise."""
    if len(text) > max_chars or _DECIMAL.fullmatch(text) is None:
        raise ValueError(f"must be a number: at most {max_chars} digits 0-9 and one '.'")
    return float(text)


def _setting_number(text: str) -> str:
    """A setting's text without surrounding ASCII blanks, which a .env file easily keeps;
    a leading '-' is refused here, so that the message says why."""
    text = text.strip(" \t")
    if text.startswith("-") and len(text) > 1:
        raise ValueError("must not be negative")
    return text


def _positive_int(text: str) -> int:
    value = parse_ascii_int(_setting_number(text))
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    return parse_ascii_int(_setting_number(text))


def _port(text: str) -> int:
    value = parse_ascii_int(_setting_number(text))
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


def _positive_float(text: str) -> float:
    value = parse_ascii_decimal(_setting_number(text))
    if not value > 0:
        raise ValueError("must be greater than 0")
    return value


def _non_negative_float(text: str) -> float:
    return parse_ascii_decimal(_setting_number(text))


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be one of true/false, yes/no, on/off, 1/0")


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


_URL_SCHEME = re.compile(r"^postgres(ql)?://", re.IGNORECASE)


def _database_url(text: str) -> str:
    if not _URL_SCHEME.match(text):
        # Never echo the value: it may hold a password.
        raise ValueError("must start with postgresql:// or postgres://")
    return text


def _secret(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


def _path(text: str) -> Path:
    if not text.strip():
        raise ValueError("must not be empty")
    return Path(text)


# [0-9] and [ \t], not \d and \s: those match every script's digits and spaces.
_DURATION = re.compile(r"[ \t]*([0-9]{1,15}(?:\.[0-9]{1,15})?)[ \t]*([smhd])[ \t]*")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Longer has no use, and far longer cannot be subtracted from now (datetime, interval).
_LONGEST_DURATION = 36500 * 86400


def parse_duration(text: str) -> float:
    """``30s``, ``15m``, ``12h`` or ``7d`` (digits 0-9), in seconds."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError("must be a number and a unit: 30s, 15m, 12h or 7d")
    seconds = parse_ascii_decimal(match.group(1), max_chars=31) * _DURATION_UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("must be longer than 0")
    if seconds > _LONGEST_DURATION:
        raise ValueError("must be at most 36500d (100 years)")
    return seconds


_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def _api_tokens(text: str) -> tuple[ReadToken, ...]:
    """``token1=tenantA,tenantB;token2=*``: each token and the tenants it may read."""
    tokens: list[ReadToken] = []
    for index, entry in enumerate(part.strip() for part in text.split(";")):
        if not entry:
            continue
        token, sep, scope = entry.partition("=")
        token, scope = token.strip(), scope.strip()
        # Never echo a token: say which entry is wrong, not what it holds.
        if not sep or len(token) < 16 or not token.isprintable() or any(c.isspace() for c in token):
            raise ValueError(f"entry {index + 1} must be TOKEN=TENANT[,TENANT...] or TOKEN=*, with a token of 16 or more characters")
        tenants = [t.strip() for t in scope.split(",")]
        if scope == "*":
            tokens.append(ReadToken(token, None))
        elif tenants and all(_TENANT.fullmatch(t) for t in tenants):
            tokens.append(ReadToken(token, frozenset(tenants)))
        else:
            raise ValueError(f"entry {index + 1} must name its tenants (comma-separated) or *")
    if len({t.token for t in tokens}) != len(tokens):
        raise ValueError("a token is listed twice")
    return tuple(tokens)


def _non_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _bearer_token(text: str) -> str:
    # Never echo the token: say what is wrong, not what it holds.
    if len(text) < 16 or not text.isprintable() or any(c.isspace() for c in text):
        raise ValueError("must be 16 or more printable characters, without spaces")
    return text


# Options shared by every subcommand that talks to the database.
DATABASE_OPTIONS: tuple[Option, ...] = (
    Option("database_url", "DATABASE_URL", _database_url,
           "PostgreSQL URL; unset: start the embedded PostgreSQL in --data-dir", "URL",
           group="Database", default_text="unset: embedded",
           example="postgresql://ingest:password@db.internal:5432/codex_ingest",
           doc="PostgreSQL to store events in, `postgresql://user:pass@host:5432/db`. Unset: an embedded "
               "PostgreSQL is started in `CODEX_DATA_DIR`. For failover, list every host with "
               "`target_session_attrs=read-write`: "
               "`postgresql://user:pass@db1:5432,db2:5432/db?target_session_attrs=read-write`."),
    Option("data_dir", "CODEX_DATA_DIR", Path,
           "data directory of the embedded PostgreSQL", "PATH",
           group="Database",
           doc="Data directory of the embedded PostgreSQL (only used without `DATABASE_URL`)."),
    Option("log_level", "LOG_LEVEL", _log_level,
           "DEBUG, INFO, WARNING, ERROR or CRITICAL", "LEVEL",
           group="Logs and metrics",
           doc="`DEBUG`, `INFO`, `WARNING`, `ERROR` or `CRITICAL`. Logs are JSON lines on stderr."),
)

SERVE_OPTIONS: tuple[Option, ...] = (
    Option("webhook_secret", "WEBHOOK_SECRET", _secret,
           "HMAC-SHA256 key that signs every webhook body", "SECRET",
           group="Service", default_text="required", example="change-me",
           doc="Key of the generic scheme: `X-Signature: sha256=<hex HMAC-SHA256 of the body>`. Required, "
               "except with a sources file that sets `strict_sources = true`. Keep it out of shell history "
               "and of flags (a flag shows in `ps`)."),
    Option("sources", "CODEX_SOURCES", _path,
           "TOML file declaring provider sources and their signature schemes", "PATH",
           group="Service", default_text="none", example="sources.toml",
           doc="TOML file declaring, per source, the provider's signature scheme (square, shopify, stripe, "
               "standard-webhooks, toast, clover, or the service's own: hmac-sha256-bound, the default, or "
               "hmac-sha256-body) and its secrets (`env:NAME` or literal, or one list per tenant): "
               "see [providers.md](providers.md) and `sources.example.toml`. Unset: every source uses the "
               "generic `X-Signature` scheme over the body with `WEBHOOK_SECRET`."),
    Option("host", "HOST", _non_empty, "address to listen on", "HOST", group="Service"),
    Option("port", "PORT", _port, "port to listen on", "PORT", group="Service"),
    Option("workers", "WORKERS", _positive_int,
           "server processes sharing the port", "N",
           group="Service", default_text="the number of CPU cores", example="2",
           doc="Server processes sharing the port (SO_REUSEPORT), each with its own pool of up to "
               "`DB_POOL_MAX` connections."),
    Option("shutdown_grace_seconds", "SHUTDOWN_GRACE_SECONDS", _positive_float,
           "after SIGTERM, seconds in-flight requests and batches get to finish before they are cancelled",
           "SECONDS", group="Service",
           doc="After SIGTERM listening stops at once, and requests and batches in flight get this many "
               "seconds to finish and be answered before they are cancelled; then the pool is closed and the "
               "process exits 0."),
    *DATABASE_OPTIONS[:2],
    Option("db_pool_min", "DB_POOL_MIN", _non_negative_int,
           "connections the pool keeps open", "N", group="Database"),
    Option("db_pool_max", "DB_POOL_MAX", _positive_int,
           "most connections the pool opens", "N", group="Database"),
    Option("db_connect_timeout", "DB_CONNECT_TIMEOUT", _positive_float,
           "seconds to wait for a connection before answering 503", "SECONDS", group="Database"),
    Option("db_command_timeout", "DB_COMMAND_TIMEOUT", _positive_float,
           "seconds one statement may run before answering 503", "SECONDS", group="Database"),
    Option("db_write_timeout", "DB_WRITE_TIMEOUT", _positive_float,
           "seconds a request waits for its event's write (queue, connection, statements, commit) "
           "before answering 503", "SECONDS",
           group="Database",
           doc="Seconds one request waits for its event's write in all: waiting for a batch, a connection, "
               "the statements and the commit. Past it the request gets 503 with `Retry-After` and a batch "
               "still in flight is cancelled (it commits as a whole or not at all; a retry is answered as a "
               "duplicate if it committed)."),
    Option("retry_after_seconds", "RETRY_AFTER_SECONDS", _positive_int,
           "Retry-After sent with 503", "SECONDS", group="Database"),
    Option("db_statement_cache_size", "DB_STATEMENT_CACHE_SIZE", _non_negative_int,
           "prepared statements asyncpg caches per connection; 0 behind PgBouncer in transaction mode "
           "before 1.21", "N",
           group="Database",
           doc="Prepared statements asyncpg caches per pooled connection (asyncpg's default). Set 0 when "
               "`DATABASE_URL` goes through PgBouncer in transaction mode before 1.21, which cannot follow "
               "named prepared statements across server connections: see [scaling.md](scaling.md#pgbouncer)."),
    Option("max_body_bytes", "MAX_BODY_BYTES", _positive_int,
           "largest accepted body in bytes; larger is 413", "BYTES", group="Request limits"),
    Option("max_batch_bytes", "MAX_BATCH_BYTES", _positive_int,
           "largest accepted body of POST /pos/{source}/ingest/batch in bytes; larger is 413", "BYTES",
           group="Request limits"),
    Option("batch_max_items", "BATCH_MAX_ITEMS", _positive_int,
           "most events in one POST /pos/{source}/ingest/batch; more is 413", "N", group="Request limits"),
    Option("header_read_timeout", "HEADER_READ_TIMEOUT", _positive_float,
           "seconds a client gets to send a request's line and headers, else 408 and the connection is closed",
           "SECONDS", group="Request limits",
           doc="Seconds a client gets to send a complete request line and headers (from the connection's "
               "opening, or from the first byte of its next request); else 408 if it sent anything, and the "
               "connection is closed."),
    Option("body_read_timeout", "BODY_READ_TIMEOUT", _positive_float,
           "seconds a client gets to send a request's body after its headers, else 408", "SECONDS",
           group="Request limits"),
    Option("keepalive_timeout", "KEEPALIVE_TIMEOUT", _positive_float,
           "seconds an idle keep-alive connection stays open between requests", "SECONDS",
           group="Request limits"),
    Option("write_timeout", "WRITE_TIMEOUT", _positive_float,
           "seconds a response may wait for a client that does not read it, else the connection is closed",
           "SECONDS", group="Request limits",
           doc="Seconds the part of a response the kernel could not take yet may wait for the client to read; "
               "past it the connection is aborted and what it held (the response, requests pipelined behind "
               "it) is freed ([security.md](security.md#write-deadline))."),
    Option("body_buffer_bytes", "BODY_BUFFER_BYTES", _positive_int,
           "bytes of request bodies one worker holds at once before they are verified; past it, 503", "BYTES",
           group="Request limits",
           doc="Bytes of request bodies each worker holds at once, counted from before a body is read (its "
               "`Content-Length`, or a chunked body as it arrives) until its request is answered. A body that "
               "would pass it is answered 503 `server_busy` with `Retry-After`, unread, and its connection "
               "closed. A quarter is kept for bodies of 64 KiB or less, so that large uploads cannot shut out "
               "ordinary events. At least 4/3 of the larger of `MAX_BODY_BYTES` and `MAX_BATCH_BYTES` "
               "([security.md](security.md#body-budget))."),
    Option("headers_max_bytes", "HEADERS_MAX_BYTES", _positive_int,
           "most bytes of request headers stored with one event; the ones past it are left out and counted",
           "BYTES", group="Request limits",
           doc="Most bytes (names and values, UTF-8) of the request headers stored with each event: a "
               "source's scheme's own first, then `Content-Type`, `User-Agent` and its table's `headers`. "
               "A request with more is not refused for it: the headers that do not fit are left out and "
               "counted in `codex_ingest_headers_dropped_total{reason=\"size\"}` "
               "([providers.md](providers.md#stored-headers))."),
    Option("rate_limit_per_sec", "RATE_LIMIT_PER_SEC", _non_negative_float,
           "ingest requests per second per (tenant, source) in each process; 0: no limit", "RATE",
           group="Request limits",
           doc="Ingest requests a second per (tenant, source), in each process; over it, 429 with "
               "`Retry-After`. 0 turns the limit off. Per process: with `WORKERS=N` and R replicas a tenant "
               "may get up to N × R times the rate (see [security.md](security.md#rate-limit))."),
    Option("rate_limit_burst", "RATE_LIMIT_BURST", _positive_int,
           "requests a (tenant, source) may send at once before the rate applies", "N", group="Request limits"),
    Option("batching", "BATCHING", _bool,
           "coalesce concurrent ingests into one INSERT per batch", "BOOL",
           group="Micro-batching",
           doc="Coalesce concurrent ingests into one INSERT and one commit per batch. Off: one INSERT per "
               "request."),
    Option("batch_max_rows", "BATCH_MAX_ROWS", _positive_int,
           "most events in one batch", "N", group="Micro-batching"),
    Option("batch_max_delay_ms", "BATCH_MAX_DELAY_MS", _non_negative_float,
           "longest wait for a batch to fill, in ms; 0: write as soon as a batch slot is free", "MS",
           group="Micro-batching"),
    Option("batch_max_in_flight", "BATCH_MAX_IN_FLIGHT", _positive_int,
           "batches one worker writes at once, each on its own connection", "N",
           group="Micro-batching",
           doc="Batches one worker writes at once, each on its own pool connection. Fewer batches in flight "
               "make bigger batches and fewer commits: 2 gave the lowest p99 at the same throughput "
               "([bench.md](bench.md#choosing-the-defaults))."),
    Option("api_tokens", "CODEX_API_TOKENS", _api_tokens,
           "read API bearer tokens and their tenants, token1=tenantA,tenantB;token2=*", "TOKENS",
           group="Read side", default_text="none: reading is off",
           example="'change-me-0123456789=shop-1,shop-2;change-me-too-0123456789=*'",
           doc="Read API (`GET /events`) bearer tokens and the tenants each may read, "
               "`token1=tenantA,tenantB;token2=*` (`*`: every tenant); tokens of 16 or more characters. "
               "Quote the value in a shell: `;` ends a command there. Unset: `GET /events` answers 404."),
    Option("retention", "RETENTION", parse_duration,
           "delete events older than this, in the background (30s, 15m, 12h, 7d)", "DURATION",
           group="Read side", default_text="none: keep everything", example="7d",
           doc="Delete events older than this (`30s`, `15m`, `12h`, `7d`) in the background, in short "
               "chunks. A key is deduplicated only while its event is retained. One-off: "
               "`codex-ingest purge --older-than 7d`."),
    Option("read_notify", "READ_NOTIFY", _bool,
           "after each write, NOTIFY waiting readers so they answer at once", "BOOL",
           group="Read side",
           doc="After each write, `NOTIFY` the workers so readers waiting at the head "
               "(`GET /events?wait=N`) answer at once; off, they answer at their timeout."),
    Option("read_page_max_bytes", "READ_PAGE_MAX_BYTES", _positive_int,
           "most bytes of event bodies in one GET /events page; an event larger than this comes alone", "BYTES",
           group="Read side",
           doc="Most bytes of event bodies (as stored, before base64) in one `GET /events` page: the page "
               "ends before the event that would pass it, and `next_cursor` continues from there. An event "
               "larger than this comes alone, in a page of its own ([consuming.md](consuming.md#the-read-api))."),
    Option("read_max_waiting", "READ_MAX_WAITING", _non_negative_int,
           "most readers one worker keeps waiting at the head (GET /events?wait=N); past it, answered at once",
           "N", group="Read side",
           doc="Most readers each worker keeps waiting at the head (`GET /events?wait=N`). Every write wakes "
               "all of them to read again (two at a time), whatever their tenant: their number is what each "
               "write costs. "
               "Past it, a read that finds nothing is answered at once, empty, with `Retry-After` set to its "
               "`wait` ([consuming.md](consuming.md#waiting-at-the-head-long-poll)). 0: nobody waits."),
    Option("listen_database_url", "LISTEN_DATABASE_URL", _database_url,
           "PostgreSQL URL for the read side's LISTEN connection, which needs a session: a direct URL when "
           "DATABASE_URL goes through PgBouncer in transaction mode", "URL",
           group="Read side", default_text="`DATABASE_URL`",
           example="postgresql://ingest:password@db.internal:5432/codex_ingest",
           doc="PostgreSQL for the read side's `LISTEN` connection (one per worker), which needs a session "
               "of its own. Set it to a direct PostgreSQL URL when `DATABASE_URL` goes through PgBouncer in "
               "transaction mode."),
    DATABASE_OPTIONS[2],
    Option("access_log", "ACCESS_LOG", _bool,
           "log one JSON line per request (off by default: it costs throughput)", "BOOL",
           group="Logs and metrics"),
    Option("metrics_remote_label", "METRICS_REMOTE_LABEL", _bool,
           "label HTTP metrics with the client address (off by default: unbounded series)", "BOOL",
           group="Logs and metrics",
           doc="Label the HTTP metrics (`aiohttp_*`) with the client address. Off by default: one set of "
               "series per client address is unbounded; it makes sense only behind a proxy."),
    Option("metrics_token", "METRICS_TOKEN", _bearer_token,
           "bearer token GET /metrics requires; unset: /metrics is open", "TOKEN",
           group="Logs and metrics", default_text="none: /metrics is open",
           example="change-me-metrics-0123456789",
           doc="Bearer token `GET /metrics` requires (`Authorization: Bearer <token>`, 16 or more characters): "
               "without it, or with another, the answer is 401 `unauthorized` and nothing is rendered. Give "
               "Prometheus the token in a file (`authorization: credentials_file:`, see "
               "[monitoring.md](monitoring.md#scraping)), never in a URL. Unset: `/metrics` is open to "
               "anyone who reaches the port."),
    Option("metrics_cache_seconds", "METRICS_CACHE_SECONDS", _non_negative_float,
           "seconds one rendering of /metrics is reused for by each worker; 0: render every scrape", "SECONDS",
           group="Logs and metrics",
           doc="Seconds each worker reuses one rendering of `/metrics` for: scrapes within it get the same "
               "bytes, and scrapes that arrive while one renders wait for it, so a flood of scrapes costs at "
               "most one rendering per interval. A scrape may be this much out of date. 0: render for every "
               "scrape."),
)

MIGRATE_OPTIONS: tuple[Option, ...] = DATABASE_OPTIONS


def load_settings(
    options: tuple[Option, ...],
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
    **fixed: Any,
) -> Settings:
    """Build Settings from raw flag and environment strings.

    ``flags`` maps attribute names to the flag's raw text (None when the flag
    was not given); ``fixed`` holds values the CLI already knows (booleans
    from switches). Raises ConfigError with a one-line message naming the
    variable and flag; never includes the offending value of a secret.
    """
    values: dict[str, Any] = {}
    for option in options:
        raw = flags.get(option.attr)
        origin = option.flag
        if raw is None:
            raw = environ.get(option.env)
            origin = option.env
        if raw is None or (raw == "" and option.attr != "webhook_secret"):
            continue
        try:
            values[option.attr] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{origin} {_reason(exc)}") from None
    values.update(fixed)
    if values.get("sources") is not None:
        origin = "--sources" if flags.get("sources") is not None else "CODEX_SOURCES"
        try:
            values["source_table"] = load_sources(values["sources"], environ, destinations=parse_destinations)
        except SourcesError as exc:
            raise ConfigError(f"{origin} {exc}") from None
    if "webhook_secret" not in values:
        table = values.get("source_table")
        # With strict_sources, every source is declared with its own
        # secrets; no request can reach the generic WEBHOOK_SECRET scheme.
        if any(option.attr == "webhook_secret" for option in options) and not (table is not None and table.strict):
            raise ConfigError(
                "WEBHOOK_SECRET is required: set the environment variable or pass --webhook-secret"
                " (it may be left unset only with a sources file that sets strict_sources = true)"
            )
        values["webhook_secret"] = ""
    settings = Settings(**values)
    largest = max(settings.max_body_bytes, settings.max_batch_bytes)
    if settings.body_buffer_bytes - settings.body_buffer_bytes // 4 < largest:
        raise ConfigError(
            f"BODY_BUFFER_BYTES ({settings.body_buffer_bytes}) must be at least 4/3 of the largest body"
            f" ({largest}, MAX_BODY_BYTES or MAX_BATCH_BYTES): a quarter of it is kept for small bodies"
        )
    if settings.db_pool_min > settings.db_pool_max:
        raise ConfigError(
            f"DB_POOL_MIN ({settings.db_pool_min}) must not exceed DB_POOL_MAX ({settings.db_pool_max})"
        )
    return settings


def _reason(exc: ValueError) -> str:
    text = str(exc)
    # int()/float() errors quote the bad input ("invalid literal ... 'x'"):
    # keep the message short and free of values.
    if text.startswith(("invalid literal", "could not convert")):
        return "must be a number"
    return text


def with_database_url(settings: Settings, url: str) -> Settings:
    """A copy of settings pointing at the resolved database (embedded or not)."""
    return dataclasses.replace(settings, database_url=url)
