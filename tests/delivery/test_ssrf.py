"""The SSRF guard (codex_ingest/delivery/ssrf.py): nothing the service sends
reaches a private or loopback address unless a destination allows it.

Against a real aiohttp server on 127.0.0.1 that counts the requests it gets:
a refusal is a request that never arrived, not an error message alone. No
test needs any network beyond 127.0.0.1 (``localhost`` comes from
/etc/hosts; public addresses are only classified, never connected to).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from codex_ingest.delivery import ssrf


@dataclass
class Server:
    port: int
    hits: list[bytes] = field(default_factory=list)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    app = web.Application()
    srv = Server(port=0)

    async def record(request: web.Request) -> web.Response:
        srv.hits.append(await request.read())
        return web.Response(status=200, text="ok")

    async def redirect(request: web.Request) -> web.Response:
        srv.hits.append(await request.read())
        raise web.HTTPTemporaryRedirect(request.query["to"])

    app.router.add_post("/", record)
    app.router.add_post("/redirect", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv.port = runner.addresses[0][1]
    try:
        yield srv
    finally:
        await runner.cleanup()


async def post(url: str, *, allow_private: bool, **kwargs: object) -> BaseException | int:
    """POST through a guarded session: the status, or the exception raised."""
    async with ssrf.make_session(allow_private_network=allow_private, timeout=5) as session:
        try:
            kwargs.setdefault("allow_redirects", False)
            async with session.post(url, data=b'{"a":1}', **kwargs) as response:  # type: ignore[arg-type]
                await response.read()
                return response.status
        except aiohttp.ClientError as exc:
            return exc


LOOPBACK_FORMS = [
    "127.0.0.1", "localhost", "LOCALHOST", "127.1", "0x7f.0.0.1", "0x7f.1", "2130706433", "0177.0.0.1",
    "127.0.0.1.", "127.8.9.10", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:7f00:1]",
    "0.0.0.0", "[::]",
]


@pytest.mark.parametrize("host", LOOPBACK_FORMS)
async def test_by_default_a_loopback_destination_is_refused_and_nothing_arrives(server: Server, host: str) -> None:
    outcome = await post(f"http://{host}:{server.port}/", allow_private=False)
    assert isinstance(outcome, aiohttp.ClientError), outcome
    refusal = ssrf.refused(outcome)
    assert refusal is not None, repr(outcome)  # refused by the guard, not failed on the network
    assert server.hits == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_destination_that_allows_private_networks_is_reached(server: Server, host: str) -> None:
    assert await post(f"http://{host}:{server.port}/", allow_private=True) == 200
    assert server.hits == [b'{"a":1}']


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1", "[::ffff:127.0.0.1]"])
async def test_the_session_checks_a_literal_before_connecting(server: Server, host: str) -> None:
    outcome = await post(f"http://{host}:{server.port}/", allow_private=False)
    # From the session's check_url: aiohttp's ClientOSError, not a connector's error.
    assert isinstance(outcome, aiohttp.ClientOSError) and not isinstance(outcome, aiohttp.ClientConnectorError), repr(outcome)
    assert isinstance(outcome.__cause__, ssrf.DestinationRefused)
    assert server.hits == []


async def test_the_socket_factory_refuses_even_without_the_url_check(server: Server) -> None:
    # A per-request middlewares=() replaces the session's check_url: the
    # connector skips the resolver for a literal IP, the socket factory is
    # what is left, and it is enough.
    outcome = await post(f"http://127.0.0.1:{server.port}/", allow_private=False, middlewares=())
    assert isinstance(outcome, aiohttp.ClientConnectorError) and ssrf.refused(outcome) is not None, repr(outcome)
    assert server.hits == []


async def test_the_resolver_refuses_a_name_even_without_the_url_check(server: Server) -> None:
    outcome = await post(f"http://localhost:{server.port}/", allow_private=False, middlewares=())
    assert isinstance(outcome, aiohttp.ClientConnectorError), repr(outcome)
    refusal = ssrf.refused(outcome)
    assert refusal is not None and refusal.host == "localhost" and "resolves to" in str(refusal)
    assert server.hits == []


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
                                    "http://100.100.100.200/", "http://[::ffff:169.254.169.254]/"])
async def test_a_redirect_hop_is_checked_too(server: Server, target: str) -> None:
    # Callers never follow redirects; were one followed, the hop is checked
    # before anything connects (a metadata address: refused even when private
    # networks are allowed, so this needs no network).
    url = str(URL(f"http://127.0.0.1:{server.port}/redirect").with_query(to=target))
    outcome = await post(url, allow_private=True, allow_redirects=True)
    assert isinstance(outcome, aiohttp.ClientError) and ssrf.refused(outcome) is not None, repr(outcome)
    assert len(server.hits) == 1  # the first request only


# -- check_url -------------------------------------------------------------------------


LITERAL_LOOPBACK = ["127.0.0.1", "127.1", "0x7f.0.0.1", "0x7f.1", "2130706433", "0177.0.0.1", "017700000001",
                    "127.0.0.1.", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]"]


@pytest.mark.parametrize("host", LITERAL_LOOPBACK)
def test_check_url_refuses_every_literal_form_of_loopback(host: str) -> None:
    with pytest.raises(ssrf.DestinationRefused, match="loopback"):
        ssrf.check_url(f"http://{host}:8080/hook")
    ssrf.check_url(f"http://{host}:8080/hook", allow_private=True)


@pytest.mark.parametrize("host", ["10.0.0.1", "0x0a.1", "167772161", "192.168.1.20", "172.16.0.1", "100.64.0.1",
                                  "169.254.10.10", "[fe80::1]", "[fd12:3456::1]", "[fe80::1%25eth0]", "0.0.0.0", "[::]"])
def test_check_url_refuses_other_private_literals(host: str) -> None:
    with pytest.raises(ssrf.DestinationRefused):
        ssrf.check_url(f"https://{host}/hook")
    ssrf.check_url(f"https://{host}/hook", allow_private=True)


@pytest.mark.parametrize("url", ["http://169.254.169.254/", "http://[fd00:ec2::254]/", "http://100.100.100.200/",
                                 "http://[::ffff:169.254.169.254]/", "http://2852039166/",
                                 "http://[fd00:ec2::254%25eth0]/"])
def test_a_metadata_address_is_refused_even_when_private_networks_are_allowed(url: str) -> None:
    with pytest.raises(ssrf.DestinationRefused, match="metadata"):
        ssrf.check_url(url, allow_private=True)


@pytest.mark.parametrize("url", ["https://hooks.example.com/in", "http://localhost:8080/", "https://93.184.216.34/x",
                                 "https://[2606:4700::1111]:8443/x", "http://1e100.net/"])
def test_check_url_leaves_names_to_the_resolver_and_passes_public_literals(url: str) -> None:
    assert str(ssrf.check_url(url)) == url


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/", "file:///etc/passwd", "unix:///run/x.sock",
                                 "hooks.example.com/in", "http:///nohost", "gopher://127.0.0.1/"])
def test_check_url_refuses_other_schemes_and_no_host(url: str) -> None:
    with pytest.raises(ssrf.DestinationRefused):
        ssrf.check_url(url, allow_private=True)


def test_a_refusal_names_the_host_and_why_but_no_credentials_path_or_query() -> None:
    with pytest.raises(ssrf.DestinationRefused) as caught:
        ssrf.check_url("http://alice:s3cr3t-pw@127.0.0.1:9/private-path?token=t0k3n")
    message = str(caught.value)
    assert "127.0.0.1" in message and "loopback" in message
    for leaked in ("s3cr3t-pw", "alice", "private-path", "t0k3n"):
        assert leaked not in message
    assert caught.value.errno is None and isinstance(caught.value, OSError)


# -- the resolver ----------------------------------------------------------------------


class FixedResolver(AbstractResolver):
    """Answers every name with the given addresses (what a hostile DNS could answer)."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.closed = False

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST) for a in self.addresses]

    async def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("answer", [("10.1.2.3",), ("93.184.216.34", "10.1.2.3"), ("93.184.216.34", "::1"),
                                    ("2606:4700::1111", "::ffff:192.168.0.1"), ("169.254.169.254",)])
async def test_the_resolver_refuses_a_name_when_any_address_is_refused(answer: tuple[str, ...]) -> None:
    resolver = ssrf.GuardedResolver(FixedResolver(*answer))
    with pytest.raises(ssrf.DestinationRefused, match=r"rebind\.example"):
        await resolver.resolve("rebind.example", 443, socket.AF_UNSPEC)


async def test_the_resolver_passes_public_answers_and_closes_its_inner_one() -> None:
    inner = FixedResolver("93.184.216.34", "2606:4700::1111")
    resolver = ssrf.GuardedResolver(inner)
    results = await resolver.resolve("hooks.example.com", 443, socket.AF_UNSPEC)
    assert [r["host"] for r in results] == ["93.184.216.34", "2606:4700::1111"]
    await resolver.close()
    assert inner.closed


async def test_the_resolver_with_private_networks_allowed() -> None:
    allowed = ssrf.GuardedResolver(FixedResolver("10.1.2.3", "::1"), allow_private=True)
    assert len(await allowed.resolve("internal.example", 80)) == 2
    with pytest.raises(ssrf.DestinationRefused, match="metadata"):
        await ssrf.GuardedResolver(FixedResolver("10.1.2.3", "169.254.169.254"), allow_private=True).resolve("x", 80)


async def test_the_real_resolver_refuses_localhost() -> None:
    resolver = ssrf.GuardedResolver()
    with pytest.raises(ssrf.DestinationRefused, match="localhost"):
        await resolver.resolve("localhost", 80, socket.AF_UNSPEC)
    assert await ssrf.GuardedResolver(allow_private=True).resolve("localhost", 80, socket.AF_INET)
    await resolver.close()


def test_the_socket_factory() -> None:
    with pytest.raises(ssrf.DestinationRefused):
        ssrf.guarded_socket((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80)), allow_private=False)
    with pytest.raises(ssrf.DestinationRefused):
        ssrf.guarded_socket((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 80)), allow_private=True)
    for sockaddr, allow in ((("93.184.216.34", 80), False), (("127.0.0.1", 80), True)):
        sock = ssrf.guarded_socket((socket.AF_INET, socket.SOCK_STREAM, 6, "", sockaddr), allow_private=allow)
        sock.close()


async def test_the_session_takes_nothing_from_the_environment_and_keeps_no_cookies() -> None:
    async with ssrf.make_session(allow_private_network=False, timeout=5) as session:
        assert session.trust_env is False
        assert isinstance(session.cookie_jar, aiohttp.DummyCookieJar)


# -- the classifier --------------------------------------------------------------------


BLOCKED = [
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"), ("::1", "loopback"),
    ("10.0.0.1", "private"), ("10.255.255.255", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.168.0.1", "private"),
    ("100.64.0.1", "CGNAT"), ("100.127.255.254", "CGNAT"),
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"), ("fe80::1%eth0", "link-local"),
    ("fc00::1", "unique-local"), ("fd12:3456:789a::1", "unique-local"),
    ("fec0::1", "site-local"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"), ("ff0e::1", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"),
    ("192.0.2.1", ""), ("198.51.100.7", ""), ("203.0.113.9", ""), ("198.18.0.1", ""), ("2001:db8::1", ""),
    ("0.1.2.3", ""),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"), ("::ffff:10.0.0.1", "IPv4-mapped private"),
    ("::ffff:100.64.0.1", "IPv4-mapped shared"), ("::ffff:169.254.169.254", "IPv4-mapped a cloud metadata"),
    ("2002:7f00:1::", "6to4 loopback"), ("2002:a00:1::", "6to4 private"),
    ("64:ff9b::7f00:1", "NAT64 loopback"), ("64:ff9b::a9fe:a9fe", "NAT64 a cloud metadata"),
    ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"), ("fd00:ec2::254%eth0", "metadata"),
    ("100.100.100.200", "metadata"),
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "1.1.1.1", "11.0.0.1", "100.63.255.255", "100.128.0.1", "172.15.255.255",
          "172.32.0.1", "192.169.0.1", "223.255.255.254", "2606:4700::1111", "2001:4860:4860::8888",
          "::ffff:93.184.216.34", "64:ff9b::5db8:d822", "2002:5db8:d822::1"]


@pytest.mark.parametrize(("address", "why"), BLOCKED)
def test_blocked_addresses(address: str, why: str) -> None:
    reason = ssrf.blocked_reason(address)
    assert reason is not None and why in reason, reason
    assert ssrf.blocked_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses(address: str) -> None:
    assert ssrf.blocked_reason(address) is None
    assert ssrf.refusal(address, allow_private=False) is None


@pytest.mark.parametrize(("address", "why"), BLOCKED)
def test_allowing_private_networks_allows_all_but_metadata(address: str, why: str) -> None:
    assert (ssrf.refusal(address, allow_private=True) is None) == ("metadata" not in why)


@pytest.mark.parametrize("text", ["not-an-ip", "", "1.2.3", "::g"])
def test_an_address_that_is_not_one_is_refused(text: str) -> None:
    assert ssrf.blocked_reason(text) == "not an IP address"


@pytest.mark.parametrize(("host", "address"), [
    ("127.1", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("0x7f.0.0.1", "127.0.0.1"), ("2130706433", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"), ("127.0.0.1.", "127.0.0.1"), ("[::1]", "::1"), ("::ffff:127.0.0.1", "::ffff:7f00:1"),
    ("fe80::1%25eth0", "fe80::1%eth0"), ("10.1", "10.0.0.1"), ("93.184.216.34", "93.184.216.34"),
    ("example.com", None), ("localhost", None), ("1e100.net", None), ("0x7g.1", None),
])
def test_literal_addresses(host: str, address: str | None) -> None:
    found = ssrf.literal_address(host)
    assert (None if found is None else str(found)) == address
