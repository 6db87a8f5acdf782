from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from jobd import netguard
from jobd.netguard import (
    BlockedAddress,
    GuardedResolver,
    check_address,
    check_url,
    guarded_connector,
    parse_ip_literal,
)

# (url, allowed when allow_private=False)
URL_CASES: list[tuple[str, bool]] = [
    # --- plain private / special IPv4 literals
    ("http://127.0.0.1/", False),
    ("http://127.0.0.1:8080/admin", False),
    ("http://10.0.0.1/", False),
    ("http://172.16.5.4/", False),
    ("http://172.31.255.255/", False),
    ("http://192.168.1.1/", False),
    ("http://169.254.169.254/latest/meta-data/", False),
    ("http://100.64.0.1/", False),
    ("http://0.0.0.0/", False),
    ("http://224.0.0.1/", False),
    ("http://239.255.255.250/", False),
    ("http://240.0.0.1/", False),
    ("http://255.255.255.255/", False),
    ("http://192.0.0.8/", False),
    ("http://192.0.2.10/", False),
    ("http://198.18.0.1/", False),
    ("http://198.51.100.7/", False),
    ("http://203.0.113.9/", False),
    ("http://192.88.99.1/", False),
    # --- odd IPv4 literal spellings (inet_aton forms)
    ("http://2130706433/", False),
    ("http://0x7f000001/", False),
    ("http://0X7F000001/", False),
    ("http://127.1/", False),
    ("http://127.0.1/", False),
    ("http://0177.0.0.1/", False),
    ("http://0x7f.0.0.1/", False),
    ("http://0x7f.1/", False),
    ("http://017700000001/", False),
    ("http://0/", False),
    ("http://167772161/", False),  # 10.0.0.1
    ("http://0xa9fea9fe/", False),  # 169.254.169.254
    ("http://127.0.0.1./", False),  # trailing dot
    ("http://127.0.0.%31/", False),  # percent-encoded digit
    (
        "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/",
        False,
    ),  # fullwidth digits (IDNA-normalised)
    ("http://user:pw@127.0.0.1/", False),
    ("http://example.com@127.0.0.1/", False),
    ("http://127.0.0.1#@example.com/", False),
    # --- IPv6 literals
    ("http://[::1]/", False),
    ("http://[::]/", False),
    ("http://[::ffff:127.0.0.1]/", False),
    ("http://[::ffff:7f00:1]/", False),
    ("http://[::ffff:a9fe:a9fe]/", False),
    ("http://[::127.0.0.1]/", False),
    ("http://[64:ff9b::7f00:1]/", False),  # NAT64 of 127.0.0.1
    ("http://[64:ff9b:1::1]/", False),
    ("http://[2002:7f00:1::1]/", False),  # 6to4 of 127.0.0.1
    ("http://[2002:a00:1::1]/", False),  # 6to4 of 10.0.0.1
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", False),  # Teredo
    ("http://[2001:db8::1]/", False),
    ("http://[100::1]/", False),
    ("http://[fe80::1]/", False),
    ("http://[fe80::1%25eth0]/", False),
    ("http://[fc00::1]/", False),
    ("http://[fd12:3456::1]/", False),
    ("http://[fec0::1]/", False),
    ("http://[ff02::1]/", False),
    # --- localhost names
    ("http://localhost/", False),
    ("http://LOCALHOST:8000/", False),
    ("http://localhost./", False),
    ("http://foo.localhost/", False),
    ("https://a.b.localhost/x", False),
    # --- public addresses and names
    ("http://93.184.216.34/", True),
    ("http://8.8.8.8/", True),
    ("https://1.1.1.1/dns-query", True),
    ("http://134744072/", True),  # 8.8.8.8 as one integer
    ("http://0x08080808/", True),
    ("http://[2606:4700::1111]/", True),
    ("http://[2001:4860:4860::8888]/", True),
    ("http://[::ffff:8.8.8.8]/", True),
    ("http://[64:ff9b::808:808]/", True),
    ("http://[2002:808:808::1]/", True),
    ("https://example.com/path", True),
    ("https://example.com:8443/path?q=1#frag", True),
    ("http://user:pw@example.com/", True),
    ("http://localhost.example.com/", True),
    ("http://1e100.net/", True),
    ("http://deadbeef.example/", True),
]

# URLs rejected even with allow_private=True
BAD_FORM_CASES: list[str] = [
    "ftp://example.com/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:70/",
    "javascript:alert(1)",
    "//example.com/",
    "example.com",
    "http:///nohost",
    "http:example.com",
    "https://",
    "http://example.com:notaport/",
    "http://example.com:99999/",
    "http://[::1/",
    "http://example.com\\@127.0.0.1/",
]


# URLs that could never be sent, refused whatever the address policy: (url, reason)
UNSENDABLE_CASES: list[tuple[str, str]] = [
    ("http://a..b.example/", "empty label"),
    ("http://.example.com/", "empty label"),
    ("http://example.com../", "empty label"),
    ("http://\u2488.com/", "empty label"),  # UTS 46 maps it to "1." : "1..com"
    ("http://ex ample.com/", "contains ' '"),
    ("http://ex%20ample.com/", "contains '%'"),
    ("http://a*b.example/", "contains '*'"),
    ('http://a"b.example/', "contains '\"'"),
    ("http://a{b.example/", "contains '{'"),
    ("http://xn--zz.example/", "not a valid IDNA label"),
    ("http://xn--a.example/", "not a valid IDNA label"),
    ("http://xn--.example/", "not a valid IDNA label"),
    ("http://" + "a" * 64 + ".example/", "label over 63"),
    ("http://" + "a." * 127 + "com/", "over 253 characters"),
    ("http://1.2.3.256/", "not an IPv4 address"),
    ("http://4294967296/", "not an IPv4 address"),
    ("http://example.123/", "not an IPv4 address"),
    ("http://exa\x00mple.com/", "control character"),
    ("http://exa\tmple.com/", "control character"),  # yarl would drop it silently
    ("http://example.com/\r\nX-Injected: 1", "control character"),
    ("http://example.com/\x7f", "control character"),
    ("http://example.com:0/", "port 0"),
    ("http://[::1]:0/", "port 0"),
    ("http://example.com:65536/", "out of range"),
    ("http://example.com: 80/", "not a number"),
    ("http://example.com:+80/", "not a number"),
    ("http://[v1.fe]/", "not an IPv6 address"),
    ("http://\udcff.com/", "invalid URL"),  # no IDNA encoding exists
    ("http://example.com/" + "a" * 8174, "over 8192 characters"),
    ("http://\u200b.com/", "invalid URL"),
]

# Odd but sendable: they stay accepted.
SENDABLE_CASES: list[str] = [
    "http://example.com./",  # a fully qualified name
    "http://_acme.example.com/",
    "http://a-b.example/",
    "http://xn--exmple-cua.com/",  # exämple.com
    "http://ex\u00e4mple.com/",
    "http://xn--ls8h.la/",  # valid Punycode, valid for IDNA 2003 resolvers
    "http://a\u3002b.example/",  # ideographic full stop, mapped to "."
    "http://example.com:/",  # an empty port is the default port
    "http://example.com:065535/",
    "http://" + "a" * 63 + ".example/",
    "http://" + "a." * 125 + "com./",  # 253 characters and the root
    "http://example.com/a path",  # yarl percent-encodes the space
    "http://1e100.net/",
    "http://example.com/" + "a" * 8173,  # 8192 characters
]


@pytest.mark.parametrize(("url", "reason"), UNSENDABLE_CASES)
@pytest.mark.parametrize("allow_private", [False, True])
def test_urls_that_could_never_be_sent_are_refused(url: str, reason: str,
                                                   allow_private: bool) -> None:
    with pytest.raises(BlockedAddress, match=re.escape(reason)):
        check_url(url, allow_private=allow_private)


@pytest.mark.parametrize("url", SENDABLE_CASES)
def test_odd_but_sendable_urls_are_accepted(url: str) -> None:
    check_url(url, allow_private=False)


@pytest.mark.parametrize(("url", "allowed"), URL_CASES)
def test_check_url_table(url: str, allowed: bool) -> None:
    if allowed:
        check_url(url, allow_private=False)
    else:
        with pytest.raises(BlockedAddress):
            check_url(url, allow_private=False)


@pytest.mark.parametrize(("url", "allowed"), URL_CASES)
def test_allow_private_lets_everything_well_formed_through(
    url: str, allowed: bool
) -> None:
    check_url(url, allow_private=True)


@pytest.mark.parametrize("url", BAD_FORM_CASES)
@pytest.mark.parametrize("allow_private", [False, True])
def test_bad_scheme_host_port_always_rejected(url: str, allow_private: bool) -> None:
    with pytest.raises(BlockedAddress):
        check_url(url, allow_private=allow_private)


def test_blocked_address_is_value_error_with_clear_message() -> None:
    assert issubclass(BlockedAddress, ValueError)
    with pytest.raises(
        BlockedAddress, match=r"10\.0\.0\.1 .*private network \(10\.0\.0\.0/8\)"
    ):
        check_url("http://10.0.0.1/", allow_private=False)
    with pytest.raises(BlockedAddress, match="scheme 'ftp'"):
        check_url("ftp://example.com/", allow_private=True)
    with pytest.raises(BlockedAddress, match="no host"):
        check_url("http:///nohost", allow_private=True)
    with pytest.raises(BlockedAddress, match=r"embeds IPv4 127\.0\.0\.1.*loopback"):
        check_url("http://[::ffff:127.0.0.1]/", allow_private=False)
    with pytest.raises(BlockedAddress, match=r"169\.254\.169\.254"):
        check_address("169.254.169.254")


ADDRESS_CASES: list[tuple[str, bool]] = [
    ("0.1.2.3", False),
    ("10.255.255.255", False),
    ("100.127.255.255", False),
    ("100.128.0.0", True),
    ("127.255.255.254", False),
    ("172.15.255.255", True),
    ("172.32.0.0", True),
    ("192.169.0.1", True),
    ("198.20.0.1", True),
    ("223.255.255.255", True),
    ("::", False),
    ("::1", False),
    ("::ffff:10.1.2.3", False),
    ("::ffff:93.184.216.34", True),
    ("fe80::1%eth0", False),
    ("febf::1", False),
    ("fbff::1", False),  # reserved f800::/6 (second net)
    ("2a00:1450:4001:81d::200e", True),
    ("2001:200::1", True),  # just outside 2001::/23
    ("2001:1ff::1", False),
    ("not-an-ip", False),
    ("", False),
]


@pytest.mark.parametrize(("ip", "allowed"), ADDRESS_CASES)
def test_check_address_table(ip: str, allowed: bool) -> None:
    if allowed:
        check_address(ip)
        check_address(ipaddress.ip_address(ip))
    else:
        with pytest.raises(BlockedAddress):
            check_address(ip)


def test_check_address_accepts_address_objects() -> None:
    with pytest.raises(BlockedAddress):
        check_address(ipaddress.IPv6Address("fe80::1%eth0"))
    with pytest.raises(BlockedAddress):
        check_address(ipaddress.IPv4Address("127.0.0.1"))
    check_address(ipaddress.IPv6Address("2606:4700::1111"))


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("10.1.65535", "10.1.255.255"),
        ("4294967295", "255.255.255.255"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("[fe80::1%25eth0]", "fe80::1"),
        ("example.com", None),
        ("localhost", None),
        ("1e100.net", None),
        ("4294967296", None),
        ("1.2.3.256", None),
        ("08.0.0.1", None),
        ("1..2", None),
        ("1.2.3.4.5", None),
        ("0x0x1", None),
        ("", None),
        ("[not-v6]", None),
    ],
)
def test_parse_ip_literal(host: str, expected: str | None) -> None:
    result = parse_ip_literal(host)
    assert result == (None if expected is None else ipaddress.ip_address(expected))


def _odd_spellings(value: int) -> list[str]:
    b = value.to_bytes(4, "big")
    return [
        str(value),
        hex(value),
        "0" + oct(value)[2:],
        ".".join("0" + oct(x)[2:] for x in b),
        ".".join(hex(x) for x in b),
        f"{b[0]}.{int.from_bytes(b[1:], 'big')}",
        f"{b[0]}.{b[1]}.{int.from_bytes(b[2:], 'big')}",
        f"{hex(b[0])}.{oct(b[1]).replace('o', '')}.{b[2]}.{hex(b[3])}",
    ]


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_odd_spellings_parse_like_inet_aton_and_decide_like_canonical(
    value: int,
) -> None:
    canonical = ipaddress.IPv4Address(value)
    try:
        check_address(canonical)
        allowed = True
    except BlockedAddress:
        allowed = False
    for spelling in _odd_spellings(value):
        assert parse_ip_literal(spelling) == canonical, spelling
        assert socket.inet_aton(spelling) == canonical.packed, spelling
        url = f"http://{spelling}/"
        if allowed:
            check_url(url, allow_private=False)
        else:
            with pytest.raises(BlockedAddress):
                check_url(url, allow_private=False)


@given(st.text(alphabet="0123456789xX.", min_size=1, max_size=20))
def test_anything_inet_aton_accepts_is_treated_as_literal(host: str) -> None:
    try:
        packed = socket.inet_aton(host)
    except OSError:
        return
    assert parse_ip_literal(host) == ipaddress.IPv4Address(packed)


# --------------------------------------------------------------- resolver


def test_guarded_resolver_refuses_name_resolving_to_loopback() -> None:
    async def main() -> None:
        resolver = GuardedResolver(allow_private=False)
        try:
            with pytest.raises(BlockedAddress, match="localhost"):
                await resolver.resolve("localhost", 80, socket.AF_UNSPEC)
            # aiohttp hands non-digit-only literal spellings to the resolver
            with pytest.raises(BlockedAddress):
                await resolver.resolve("0x7f000001", 80, socket.AF_INET)
        finally:
            await resolver.close()

    asyncio.run(main())


def test_guarded_resolver_passes_through_when_private_allowed() -> None:
    async def main() -> list[str]:
        resolver = GuardedResolver(allow_private=True)
        try:
            results = await resolver.resolve("localhost", 80, socket.AF_INET)
        finally:
            await resolver.close()
        return [r["host"] for r in results]

    assert "127.0.0.1" in asyncio.run(main())


def test_guarded_resolver_default_is_strict() -> None:
    async def main() -> None:
        resolver = GuardedResolver()
        with pytest.raises(BlockedAddress):
            await resolver.resolve("localhost", 0, socket.AF_INET)
        await resolver.close()

    asyncio.run(main())


def test_guarded_connector_refuses_custom_resolver() -> None:
    with pytest.raises(TypeError):
        guarded_connector(False, resolver=GuardedResolver())


# ------------------------------------------------------------- end to end

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _serve(
    seen: list[str], routes: dict[str, Handler] | None = None
) -> tuple[web.AppRunner, int]:
    async def ok(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        return web.Response(text="secret")

    app = web.Application()
    app.router.add_get("/", ok)
    for path, handler in (routes or {}).items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port: int = runner.addresses[0][1]
    return runner, port


async def _fetch(url: str, allow_private: bool) -> str:
    async with (
        aiohttp.ClientSession(connector=guarded_connector(allow_private)) as session,
        session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp,
    ):
        return await resp.text()


@pytest.mark.parametrize(
    "host",
    ["localhost", "127.0.0.1", "0x7f000001", "[::ffff:127.0.0.1]"],
)
def test_end_to_end_guarded_session_cannot_reach_local_server(host: str) -> None:
    async def main() -> list[str]:
        seen: list[str] = []
        runner, port = await _serve(seen)
        try:
            with pytest.raises(BlockedAddress):
                await _fetch(f"http://{host}:{port}/", allow_private=False)
        finally:
            await runner.cleanup()
        return seen

    assert asyncio.run(main()) == []


def test_end_to_end_allow_private_reaches_local_server() -> None:
    async def main() -> tuple[str, list[str]]:
        seen: list[str] = []
        runner, port = await _serve(seen)
        try:
            body = await _fetch(f"http://localhost:{port}/", allow_private=True)
        finally:
            await runner.cleanup()
        return body, seen

    assert asyncio.run(main()) == ("secret", ["/"])


def test_end_to_end_redirect_to_private_literal_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A public-looking first hop that redirects to 127.0.0.1 must not be followed."""
    real_resolve = GuardedResolver.resolve

    async def fake_resolve(
        self: GuardedResolver, host: str, port: int = 0, family: Any = socket.AF_INET
    ) -> Any:
        if host == "public.test":  # pretend this name is a public server
            return [
                {
                    "hostname": host,
                    "host": "127.0.0.1",
                    "port": port,
                    "family": socket.AF_INET,
                    "proto": 0,
                    "flags": 0,
                }
            ]
        return await real_resolve(self, host, port, family)

    monkeypatch.setattr(netguard.GuardedResolver, "resolve", fake_resolve)

    async def main() -> list[str]:
        seen: list[str] = []
        port = 0

        async def start(request: web.Request) -> web.StreamResponse:
            seen.append(request.path)
            raise web.HTTPFound(f"http://127.0.0.1:{port}/")

        runner, port = await _serve(seen, {"/start": start})
        try:
            with pytest.raises(BlockedAddress):
                await _fetch(f"http://public.test:{port}/start", allow_private=False)
        finally:
            await runner.cleanup()
        return seen

    assert asyncio.run(main()) == ["/start"]
