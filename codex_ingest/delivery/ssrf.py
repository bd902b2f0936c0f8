"""The SSRF guard: what the service sends out never reaches a private or
loopback address unless a destination says so (``allow_private_network``).

Refused (``blocked_reason``): loopback, private (RFC 1918), shared
(100.64.0.0/10, CGNAT), link-local (169.254.0.0/16, fe80::/10),
unique-local (fc00::/7), site-local (fec0::/10), unspecified, multicast,
reserved, anything else not globally reachable (documentation and
benchmarking ranges, ...), and a cloud metadata address (169.254.169.254,
fd00:ec2::254, 100.100.100.200). An IPv6 address that carries an IPv4 one
(IPv4-mapped ``::ffff:a.b.c.d``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``)
is judged by the IPv4 address too. A metadata address is refused even when
a destination allows private networks: no destination needs the host's
credentials endpoint.

Three layers, each enough on its own for what it sees; a session from
``make_session`` has all three:

1. ``check_url``: before any request, the URL's scheme (http, https) and a
   literal IP host in any form ``getaddrinfo`` would accept (``127.1``,
   ``0x7f.0.0.1``, ``2130706433``, ``[::ffff:127.0.0.1]``). aiohttp's
   connector never asks the resolver about a literal IP
   (``TCPConnector._resolve_host``), so only this layer and the third see
   one. A session's middleware runs it on every request (and every
   redirect hop).
2. ``GuardedResolver``: wraps aiohttp's resolver and refuses a name when
   ANY address it resolves to is refused (not only the first: the
   connector tries them all). The connector connects to exactly the
   addresses returned, so a DNS answer that changes between the check
   and the connection (rebinding) is not a way around it.
3. The connector's socket factory refuses to create a socket for a
   refused address: the last word, whatever the path to it.

A refusal is ``DestinationRefused`` (an ``OSError``), naming the host,
the address and why, never a URL's path, query or credentials.
``check_url`` raises it as it is; inside a session's request aiohttp
wraps it (``ClientOSError`` from the middleware, ``ClientConnectorError``
from the resolver or the socket factory), with it as ``__cause__``:
``refused(exc)`` finds it, so a caller can tell a refusal from a network
failure.

Callers never follow redirects (``allow_redirects=False`` on every
request): a 3xx is a delivery's answer, not an instruction to send the
event elsewhere. The guard would still check each hop, but the event must
not go to an address the destination did not name.
"""

from __future__ import annotations

import functools
import ipaddress
import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

import codex_ingest

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

USER_AGENT = f"codex-ingest/{codex_ingest.__version__} (push delivery)"

METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
METADATA_REASON = "a cloud metadata address"
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_SCHEMES = ("http", "https")


class DestinationRefused(OSError):
    """A request the SSRF guard will not let out."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"refused to send to {host!r}: {reason}")
        self.host = host
        self.reason = reason


def refused(exc: BaseException) -> DestinationRefused | None:
    """The guard's refusal behind ``exc`` (itself, or a cause or context of it), or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, DestinationRefused):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    if any(address in net for net in _NAT64):
        return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _without_scope(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return ipaddress.IPv6Address(int(address))
    return address


def blocked_reason(address: Address | str) -> str | None:
    """Why nothing may be sent to ``address``, or None when it is a public one."""
    if isinstance(address, str):
        try:
            address = ipaddress.ip_address(address)
        except ValueError:
            return "not an IP address"
    address = _without_scope(address)
    if address in METADATA:
        return METADATA_REASON
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            kind, inner = embedded
            inner_reason = blocked_reason(inner)
            if inner_reason is not None:
                return f"{kind} {inner_reason}"
            if kind != "6to4":
                return None  # a public IPv4 address, written as IPv6 (NAT64: as a DNS64 network resolves it)
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED:
        return "shared address space (CGNAT)"
    if isinstance(address, ipaddress.IPv6Address):
        if address in _UNIQUE_LOCAL:
            return "unique-local"
        if address.is_site_local:
            return "site-local"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:  # a backstop: Python 3.11 counts every such range as private already
        return "not globally reachable"
    return None


def refusal(address: Address | str, allow_private: bool) -> str | None:
    """Why ``address`` is refused under a destination's setting, or None."""
    reason = blocked_reason(address)
    if reason is None or not allow_private:
        return reason
    return reason if reason.endswith(METADATA_REASON) else None


def literal_address(host: str) -> Address | None:
    """The address a host names literally, in any form getaddrinfo accepts
    (``127.1``, ``0x7f.0.0.1``, ``017700000001``, ``2130706433``, ``[::1]``,
    ``fe80::1%eth0``); None for a name."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.replace("%25", "%").rstrip(".")
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if ":" in text:
        return None
    try:
        # glibc's inet_aton: what getaddrinfo takes as a numeric IPv4 host.
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except (OSError, ValueError, UnicodeError):
        return None


def check_url(url: str | URL, allow_private: bool = False) -> URL:
    """The URL, when the guard lets a request to it out; DestinationRefused otherwise.

    Checks the scheme and a literal IP host. A name is the resolver's to
    check, when it is resolved (``GuardedResolver``). The verdict depends on
    the URL's text alone (no lookup), so it is kept: a destination's URL is
    checked once, not parsed again on every attempt.
    """
    parsed, refused_by = _verdict(str(url), allow_private)
    if refused_by is not None:
        raise DestinationRefused(*refused_by)
    assert parsed is not None
    return parsed


@functools.lru_cache(maxsize=1024)
def _verdict(url: str, allow_private: bool) -> tuple[URL | None, tuple[str, str] | None]:
    """(the parsed URL, None) or (None, (host shown, reason)): check_url's answer for this text."""
    try:
        return _check(url, allow_private), None
    except DestinationRefused as exc:
        return None, (exc.host, exc.reason)


def _check(url: str | URL, allow_private: bool) -> URL:
    try:
        parsed = url if isinstance(url, URL) else URL(url)
        scheme = parsed.scheme
        hosts = {h for h in (parsed.raw_host, parsed.host) if h}
    except (ValueError, TypeError, UnicodeError):
        raise DestinationRefused("?", "not a URL") from None
    shown = parsed.raw_host or "?"
    if scheme not in _SCHEMES:
        raise DestinationRefused(shown, "only http and https URLs are sent to")
    if not hosts:
        raise DestinationRefused(shown, "the URL has no host")
    for host in sorted(hosts):
        address = literal_address(host)
        if address is None:
            continue
        reason = refusal(address, allow_private)
        if reason is not None:
            raise DestinationRefused(shown, f"{address} is {reason}")
    return parsed


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing a host any of whose addresses is refused."""

    def __init__(self, inner: AbstractResolver | None = None, *, allow_private: bool = False) -> None:
        self._inner = inner if inner is not None else aiohttp.DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            reason = refusal(result["host"], self._allow_private)
            if reason is not None:
                raise DestinationRefused(host, f"it resolves to {result['host']}, {reason}")
        return results

    async def close(self) -> None:
        await self._inner.close()


def guarded_socket(addr_info: tuple, *, allow_private: bool) -> socket.socket:
    """The connector's socket factory: no socket for a refused address."""
    family, type_, proto, _canonname, sockaddr = addr_info
    reason = refusal(str(sockaddr[0]), allow_private)
    if reason is not None:
        raise DestinationRefused(str(sockaddr[0]), reason)
    return socket.socket(family=family, type=type_, proto=proto)


def url_middleware(allow_private: bool) -> aiohttp.ClientMiddlewareType:
    """A client middleware running ``check_url`` on each request (each redirect hop too)."""

    async def check(request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
        check_url(request.url, allow_private)
        return await handler(request)

    return check


def make_session(*, allow_private_network: bool, timeout: float) -> aiohttp.ClientSession:
    """A client session for one destination's deliveries, guarded as the module says.

    Call it inside the running event loop. ``timeout`` bounds a whole
    request, connect to last byte. No proxy from the environment, no
    cookies kept between requests, bodies not decompressed. Callers pass
    ``allow_redirects=False``.
    """
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(allow_private=allow_private_network),
        socket_factory=functools.partial(guarded_socket, allow_private=allow_private_network),
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout),
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        headers={"User-Agent": USER_AGENT},
        middlewares=(url_middleware(allow_private_network),),
    )
