"""The sources file (``--sources PATH`` / CODEX_SOURCES): which providers post
to which ``/pos/{source}/ingest``, and how each signs.

::

    strict_sources = false          # true: a source not declared here is 404

    [sources.square]
    scheme = "square"
    secrets = ["env:SQUARE_KEY_NEW", "env:SQUARE_KEY_OLD"]   # any one verifying is enough
    notification_url = "https://ingest.example.com/pos/square/ingest"
    tolerance_seconds = 300         # schemes that sign a timestamp

    headers = ["Square-Environment"]   # any scheme: more request headers to store with each event

    [sources.orders]                # no scheme: hmac-sha256-bound, the service's own
    [sources.orders.tenants]        # generic sources: each tenant its own secrets
    shop-1 = ["env:SHOP1_SECRET"]

    [destinations.warehouse]        # push delivery: read by delivery/config.py
    url = "https://hooks.example.com/codex"
    secrets = ["env:WAREHOUSE_WHSEC"]

Read once at start-up into plain, picklable data (workers are spawned with
it); schemes.registry.build_sources turns it into verifiers. Every problem is one
SourcesError line naming the file, the source and the key, and never a
secret's value. The [destinations.NAME] tables are handed to the parser the
caller passes (delivery.config.parse_destinations, from settings.load_settings):
intake imports nothing of delivery.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codex_ingest.intake.checks import SOURCE_PATTERN, TENANT_PATTERN
from codex_ingest.intake.headers import HEADER_NAME, never_kept
from codex_ingest.intake.schemes.standard_webhooks import decode_secret

# The service's own X-Signature schemes. "hmac-sha256-bound" signs the time,
# tenant, route and key with the body, and is what a source declared without
# a scheme gets. "hmac-sha256-body" signs the body alone, for senders that
# cannot do more; "hmac-sha256" is its name from before the bound scheme
# existed, kept so that sources files written then mean what they meant.
BOUND = "hmac-sha256-bound"
BODY_ONLY = ("hmac-sha256-body", "hmac-sha256")
GENERIC = frozenset({BOUND, *BODY_ONLY})
DEFAULT_SCHEME = BOUND
SCHEMES = (BOUND, *BODY_ONLY, "square", "shopify", "stripe", "standard-webhooks", "toast", "clover")
# Headers that carry a scheme's shared secret itself: no table may list them.
SECRET_HEADERS = {"clover": "x-clover-auth"}
# Schemes that sign a timestamp, and so check it against tolerance_seconds.
TIMESTAMPED = frozenset({BOUND, "stripe", "standard-webhooks", "toast"})
DEFAULT_TOLERANCE_SECONDS = 300
ENV_PREFIX = "env:"


class SourcesError(Exception):
    """The sources file cannot be used; the message says why in one line."""


@dataclass(frozen=True, slots=True)
class SourceSpec:
    name: str
    scheme: str
    secrets: tuple[str, ...] = field(repr=False)  # resolved: never logged; empty with ``tenants``
    notification_url: str | None = None
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS
    # Generic schemes: each tenant's own secrets (resolved). When set, a
    # request for a tenant is verified with that tenant's secrets alone, and
    # a tenant not listed can send nothing.
    tenants: Mapping[str, tuple[str, ...]] | None = field(default=None, repr=False)
    # Request headers to store with each event besides the scheme's own (intake/headers.py).
    headers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SourcesConfig:
    strict: bool
    sources: Mapping[str, SourceSpec]
    # Every declared source's scheme by name, built or not (see parse_sources' ``build``).
    schemes: Mapping[str, str] = field(default_factory=dict)
    # Push delivery's [destinations.NAME] tables, by name: delivery.config.DestinationSpec
    # each, built by the ``destinations`` parser given to parse_sources; empty without one.
    destinations: Mapping[str, Any] = field(default_factory=dict)


# Which declared sources to build, by name and scheme.
BuildFilter = Callable[[str, str], bool]
# Reads the file's ``destinations`` value: (value, environ, origin) -> specs by name; raises SourcesError.
DestinationsParser = Callable[[Any, Mapping[str, str], str], Mapping[str, Any]]


def load_sources(path: Path, environ: Mapping[str, str], *, build: BuildFilter | None = None,
                 destinations: DestinationsParser | None = None) -> SourcesConfig:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise SourcesError(f"cannot read {path}: {exc.strerror or exc.__class__.__name__}") from None
    except UnicodeDecodeError:
        raise SourcesError(f"{path} is not UTF-8 text") from None
    return parse_sources(text, environ, origin=str(path), build=build, destinations=destinations)


def parse_sources(
    text: str, environ: Mapping[str, str], origin: str = "<sources>", *, build: BuildFilter | None = None,
    destinations: DestinationsParser | None = None,
) -> SourcesConfig:
    """The sources file's contents, every declared source built (secrets
    resolved, each key checked). ``build``, given (name, scheme), limits which
    are: the others' names and schemes are still checked and listed in
    ``schemes``, but nothing else of them is read, so a command that needs
    one source's secret (smoke) needs no other source's variable.
    ``destinations`` reads the [destinations.NAME] tables, after the sources;
    without it they are accepted unread (smoke needs no destination's
    variable either) and the config's ``destinations`` is empty."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's messages give a position, not the offending text.
        raise SourcesError(f"{origin} is not valid TOML: {exc}") from None
    unknown = set(document) - {"strict_sources", "sources", "destinations"}
    if unknown:
        raise SourcesError(f"{origin}: unknown top-level key(s) {', '.join(sorted(unknown))} "
                           "(expected strict_sources, [sources.NAME], [destinations.NAME])")
    strict = document.get("strict_sources", False)
    if not isinstance(strict, bool):
        raise SourcesError(f"{origin}: strict_sources must be true or false")
    tables = document.get("sources", {})
    if not isinstance(tables, dict):
        raise SourcesError(f"{origin}: sources must be tables, [sources.NAME]")
    schemes = {name: _scheme(name, table, origin) for name, table in tables.items()}
    specs = {
        name: _source(name, schemes[name], table, environ, origin)
        for name, table in tables.items()
        if build is None or build(name, schemes[name])
    }
    targets = {} if destinations is None else destinations(document.get("destinations", {}), environ, origin)
    return SourcesConfig(strict=strict, sources=specs, schemes=schemes, destinations=targets)


def _scheme(name: str, table: Any, origin: str) -> str:
    """The scheme of a declared source, checked with its name."""
    where = f"{origin}: [sources.{name}]"
    if SOURCE_PATTERN.fullmatch(name) is None:
        raise SourcesError(f"{where}: the source name must match ^[a-z0-9][a-z0-9_-]{{0,63}}$ (it is the URL's {{source}})")
    if not isinstance(table, dict):
        raise SourcesError(f"{where} must be a table")
    scheme = table.get("scheme", DEFAULT_SCHEME)
    if scheme not in SCHEMES:
        raise SourcesError(f"{where}: scheme must be one of {', '.join(SCHEMES)} (none: {DEFAULT_SCHEME})")
    return str(scheme)


def _source(name: str, scheme: str, table: dict[str, Any], environ: Mapping[str, str], origin: str) -> SourceSpec:
    where = f"{origin}: [sources.{name}]"
    allowed = {"scheme", "secrets", "headers"}
    if scheme == "square":
        allowed.add("notification_url")
    if scheme in TIMESTAMPED:
        allowed.add("tolerance_seconds")
    if scheme in GENERIC:
        allowed.add("tenants")
    unknown = set(table) - allowed
    if unknown:
        raise SourcesError(f"{where}: {', '.join(sorted(unknown))} not allowed for scheme {scheme!r} (allowed: {', '.join(sorted(allowed))})")
    tenants = None
    if "tenants" in table:
        if "secrets" in table:
            raise SourcesError(f"{where}: secrets and tenants cannot both be set: with [sources.{name}.tenants] "
                               "each tenant has its own secrets, and a tenant not listed is refused")
        tenants = _tenants(table["tenants"], environ, where)
        secrets: tuple[str, ...] = ()
    else:
        secrets = _secrets(table.get("secrets"), environ, where)
    if scheme == "standard-webhooks":
        for index, secret in enumerate(secrets):
            try:
                decode_secret(secret)
            except ValueError as exc:
                raise SourcesError(f"{where}: secrets[{index}] {exc}") from None
    url = table.get("notification_url")
    if scheme == "square" and not (isinstance(url, str) and url.startswith(("https://", "http://"))):
        raise SourcesError(f"{where}: scheme \"square\" needs notification_url, the URL registered with Square (it is signed with the body)")
    tolerance = table.get("tolerance_seconds", DEFAULT_TOLERANCE_SECONDS)
    if type(tolerance) is not int or tolerance < 1:
        raise SourcesError(f"{where}: tolerance_seconds must be a whole number of seconds, at least 1")
    return SourceSpec(name=name, scheme=scheme, secrets=secrets, notification_url=url, tolerance_seconds=tolerance,
                      tenants=tenants, headers=_header_names(table.get("headers", []), scheme, where))


def _header_names(value: Any, scheme: str, where: str) -> tuple[str, ...]:
    """``headers = [...]``: more request headers to keep, each a field name the service may store."""
    if not isinstance(value, list):
        raise SourcesError(f"{where}: headers must be a list of header names")
    names = []
    for index, name in enumerate(value):
        if not isinstance(name, str) or HEADER_NAME.fullmatch(name) is None:
            raise SourcesError(f"{where}: headers[{index}] must be a header name (letters, digits, - and the like; 1-64)")
        if never_kept(name) or name.lower() == SECRET_HEADERS.get(scheme):
            raise SourcesError(f"{where}: headers[{index}] {name!r} is never stored: it carries credentials "
                               "(Authorization, Cookie, Proxy-*, or this scheme's shared secret)")
        names.append(name)
    return tuple(names)


def _tenants(value: Any, environ: Mapping[str, str], where: str) -> dict[str, tuple[str, ...]]:
    """[sources.NAME.tenants]: tenant = [secrets], each list resolved like ``secrets``."""
    if not isinstance(value, dict) or not value:
        raise SourcesError(f"{where}: tenants must be a table of tenant = [secrets], with at least one tenant")
    tenants = {}
    for tenant, secrets in value.items():
        if TENANT_PATTERN.fullmatch(tenant) is None:
            raise SourcesError(f"{where}: tenants: {tenant!r} is not a tenant name (^[A-Za-z0-9][A-Za-z0-9._:-]{{0,127}}$)")
        tenants[tenant] = _secrets(secrets, environ, f"{where}: tenants.{tenant}")
    return tenants


def _secrets(value: Any, environ: Mapping[str, str], where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise SourcesError(f"{where}: secrets must be a non-empty list of strings (literal or env:NAME)")
    resolved = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise SourcesError(f"{where}: secrets[{index}] must be a non-empty string (literal or env:NAME)")
        if item.startswith(ENV_PREFIX):
            variable = item[len(ENV_PREFIX):]
            secret = environ.get(variable)
            if not secret:
                raise SourcesError(f"{where}: secrets[{index}] names the environment variable {variable}, which is unset or empty")
            item = secret
        resolved.append(item)
    return tuple(resolved)
