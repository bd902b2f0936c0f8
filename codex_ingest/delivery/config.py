"""Push delivery's configuration: the ``[destinations.NAME]`` tables of the
sources file (``--sources PATH`` / CODEX_SOURCES), beside ``[sources.*]``.

::

    [destinations.warehouse]          # NAME: like a source's name
    url = "https://hooks.example.com/codex"   # where events are POSTed: http or https
    secrets = ["env:WAREHOUSE_WHSEC_NEW", "env:WAREHOUSE_WHSEC_OLD"]   # whsec_<base64>: one signature each
    sources = ["square", "shopify"]   # which events go there; ["*"] (the default): all
    tenants = ["*"]
    ordered = false                   # true: per tenant, event n+1 waits for n's 2xx (or its parking)
    max_in_flight = 16                # concurrent requests to it (ordered: across tenants), 1..1000
    max_per_second = 50               # at most this many requests in any one second, every worker
                                      # and replica together; left out: no throttle
    timeout_seconds = 10              # per attempt, connect to last byte; at most 300
    retry_schedule = [5, 300, 1800, 7200, 18000, 36000, 36000]   # seconds before each retry; ±20% jitter
    allow_private_network = false     # true: loopback, private, link-local and metadata addresses too

intake.sources.parse_sources reads them into ``SourcesConfig.destinations``:
plain, picklable data, read once at start-up like the sources. Every problem
is one SourcesError line naming the file, ``[destinations.NAME]`` and the
key, and never a secret's value nor the URL (its query may carry a token).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from codex_ingest.intake.checks import SOURCE_PATTERN, TENANT_PATTERN
from codex_ingest.intake.schemes.standard_webhooks import decode_secret
from codex_ingest.intake.sources import SourcesError, _secrets

ALL = "*"  # sources = ["*"], tenants = ["*"]: every one
DEFAULT_MAX_IN_FLIGHT = 16
MAX_IN_FLIGHT = 1000
DEFAULT_TIMEOUT_SECONDS = 10.0
MAX_TIMEOUT_SECONDS = 300.0
DEFAULT_RETRY_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
# One wait of the schedule at most: 30 days. Far longer has no use, and the
# time it gives must still be one PostgreSQL and datetime can add to now.
MAX_RETRY_SECONDS = 30 * 86400.0
KEYS = ("url", "secrets", "sources", "tenants", "ordered", "max_in_flight", "max_per_second",
        "timeout_seconds", "retry_schedule", "allow_private_network")
# A host name as urlsplit gives it (lowercased): dot-separated labels of letters, digits, - and _.
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\.?")


@dataclass(frozen=True, slots=True)
class DestinationSpec:
    """One ``[destinations.NAME]`` table, checked, its secrets resolved."""

    name: str
    url: str
    # Resolved whsec_<base64> strings, each checked with decode_secret: never logged.
    secrets: tuple[str, ...] = field(repr=False)
    sources: tuple[str, ...] = (ALL,)  # ("*",): every source
    tenants: tuple[str, ...] = (ALL,)  # ("*",): every tenant
    ordered: bool = False
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_per_second: float | None = None  # None: no throttle
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    allow_private_network: bool = False

    def matches(self, source: str, tenant: str) -> bool:
        """Whether an event of ``source`` and ``tenant`` goes to this destination."""
        return ((self.sources == (ALL,) or source in self.sources)
                and (self.tenants == (ALL,) or tenant in self.tenants))

    @property
    def keys(self) -> tuple[bytes, ...]:
        """The HMAC keys inside ``secrets``, in their order: one signature each."""
        return tuple(decode_secret(secret) for secret in self.secrets)

    @property
    def url_origin(self) -> str:
        """``scheme://host[:port]`` of ``url``: what a log line or a summary may show
        (the path and query may carry a token)."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port is not None else "")


def parse_destinations(tables: Any, environ: Mapping[str, str], origin: str) -> dict[str, DestinationSpec]:
    """The ``destinations`` key of a sources file: every table checked and built."""
    if not isinstance(tables, dict):
        raise SourcesError(f"{origin}: destinations must be tables, [destinations.NAME]")
    return {name: _destination(name, table, environ, origin) for name, table in tables.items()}


def _destination(name: str, table: Any, environ: Mapping[str, str], origin: str) -> DestinationSpec:
    where = f"{origin}: [destinations.{name if name.isprintable() else repr(name)}]"
    if SOURCE_PATTERN.fullmatch(name) is None:
        raise SourcesError(f"{where}: the destination name must match ^[a-z0-9][a-z0-9_-]{{0,63}}$")
    if not isinstance(table, dict):
        raise SourcesError(f"{where} must be a table")
    unknown = set(table) - set(KEYS)
    if unknown:
        raise SourcesError(f"{where}: {', '.join(sorted(unknown))} not allowed (allowed: {', '.join(sorted(KEYS))})")
    url = _url(table.get("url"), where)
    secrets = _secrets(table.get("secrets"), environ, where)
    for index, secret in enumerate(secrets):
        try:
            decode_secret(secret)
        except ValueError as exc:  # its message names no value
            raise SourcesError(f"{where}: secrets[{index}] {exc} (a Standard Webhooks signing secret, "
                               "whsec_<base64>)") from None
    max_per_second = table.get("max_per_second")
    if max_per_second is not None and not _positive(max_per_second):
        raise SourcesError(f"{where}: max_per_second must be a positive number of requests a second "
                           "(left out: no throttle)")
    return DestinationSpec(
        name=name,
        url=url,
        secrets=secrets,
        sources=_names(table.get("sources", [ALL]), "sources", "source", SOURCE_PATTERN, where),
        tenants=_names(table.get("tenants", [ALL]), "tenants", "tenant", TENANT_PATTERN, where),
        ordered=_bool(table.get("ordered", False), "ordered", where),
        max_in_flight=_max_in_flight(table.get("max_in_flight", DEFAULT_MAX_IN_FLIGHT), where),
        max_per_second=None if max_per_second is None else float(max_per_second),
        timeout_seconds=_timeout(table.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS), where),
        retry_schedule=_retry_schedule(table.get("retry_schedule", list(DEFAULT_RETRY_SCHEDULE)), where),
        allow_private_network=_bool(table.get("allow_private_network", False), "allow_private_network", where),
    )


def _url(value: Any, where: str) -> str:
    """``url``: an absolute http(s) URL with a host, no userinfo, no fragment. Never echoed."""
    if value is None:
        raise SourcesError(f"{where}: url is required: the http:// or https:// URL events are POSTed to")
    if not isinstance(value, str):
        raise SourcesError(f"{where}: url must be a string, the http:// or https:// URL events are POSTed to")
    if not value.isascii() or not value.isprintable() or " " in value:
        # urlsplit would drop a tab or a newline silently, and a space is no URL's.
        raise SourcesError(f"{where}: url must be printable ASCII without spaces "
                           "(percent-encode the rest; an international host name in its xn-- form)")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:  # a bad [IPv6] host or port; its message would quote the URL
        raise SourcesError(f"{where}: url is not a valid URL (its host or port cannot be read)") from None
    if parts.scheme not in ("http", "https") or not value.lower().startswith(f"{parts.scheme}://"):
        raise SourcesError(f"{where}: url must start with http:// or https://")
    if "@" in parts.netloc:
        raise SourcesError(f"{where}: url must not carry a user name or password (user@host): "
                           "requests are authenticated by their signatures")
    if "#" in value:
        raise SourcesError(f"{where}: url must not have a #fragment (it is never sent)")
    host = parts.hostname
    if not host:
        raise SourcesError(f"{where}: url must name a host")
    if not (_is_ip(host) or (_HOST_NAME.fullmatch(host) and not host.replace(".", "").isdigit())):
        raise SourcesError(f"{where}: url's host must be a host name or an IP address")
    if port == 0:
        raise SourcesError(f"{where}: url's port must be between 1 and 65535")
    return value


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _names(value: Any, key: str, what: str, pattern: re.Pattern[str], where: str) -> tuple[str, ...]:
    """``sources`` / ``tenants``: names, or ["*"] for every one."""
    if not isinstance(value, list) or not value:
        raise SourcesError(f'{where}: {key} must be a non-empty list of {what} names, or ["*"] for every {what}')
    if ALL in value:
        if len(value) > 1:
            raise SourcesError(f'{where}: {key}: "*" means every {what}, and must be the only entry')
        return (ALL,)
    for index, name in enumerate(value):
        if not isinstance(name, str) or pattern.fullmatch(name) is None:
            shown = f" {name!r}" if isinstance(name, str) else ""
            raise SourcesError(f"{where}: {key}[{index}]{shown} is not a {what} name ({pattern.pattern})")
    if len(set(value)) != len(value):
        raise SourcesError(f"{where}: {key} lists a {what} twice")
    return tuple(value)


def _bool(value: Any, key: str, where: str) -> bool:
    if type(value) is not bool:
        raise SourcesError(f"{where}: {key} must be true or false")
    return value


def _positive(value: Any) -> bool:
    """A TOML integer or float above 0, finite (TOML has inf and nan); true and false are not numbers."""
    return type(value) in (int, float) and math.isfinite(value) and value > 0


def _max_in_flight(value: Any, where: str) -> int:
    if type(value) is not int or not 1 <= value <= MAX_IN_FLIGHT:
        raise SourcesError(f"{where}: max_in_flight must be a whole number from 1 to {MAX_IN_FLIGHT}")
    return value


def _timeout(value: Any, where: str) -> float:
    if not _positive(value) or value > MAX_TIMEOUT_SECONDS:
        raise SourcesError(f"{where}: timeout_seconds must be a positive number of seconds, "
                           f"at most {MAX_TIMEOUT_SECONDS:g}")
    return float(value)


def _retry_schedule(value: Any, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise SourcesError(f"{where}: retry_schedule must be a non-empty list of seconds before each retry, "
                           "such as [5, 300, 1800, 7200, 18000, 36000, 36000]")
    for index, seconds in enumerate(value):
        if not _positive(seconds) or seconds > MAX_RETRY_SECONDS:
            raise SourcesError(f"{where}: retry_schedule[{index}] must be a positive number of seconds, "
                               f"at most {MAX_RETRY_SECONDS:.0f} (30 days)")
    return tuple(float(seconds) for seconds in value)
