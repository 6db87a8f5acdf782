"""Outbound URL / address guard (SSRF protection) for webhooks and ``http`` jobs.

Two layers:

* :func:`check_url` — static check before a request: scheme, host, port,
  ``localhost`` names and IP-literal hosts (including legacy forms such as
  ``2130706433``, ``0x7f000001``, ``127.1``, ``0177.0.0.1``). It also refuses,
  whatever the address policy, a URL that could never be sent (:func:`check_host`):
  over :data:`MAX_URL_CHARS`, control characters, a host that is neither an IP literal
  nor a DNS name (a space, an empty or overlong label, an ``xn--`` label that is not
  valid Punycode), port 0.
* :func:`guarded_connector` — an aiohttp connector whose :class:`GuardedResolver`
  re-checks every address a hostname resolves to at connect time.

aiohttp (3.14) never calls the resolver for hosts it treats as IP literals
(anything containing ``:`` or made only of digits and dots), so the resolver
alone cannot see them. The connector built by :func:`guarded_connector`
therefore also checks literal hosts in ``connect()``, which runs for every
request *and every redirect hop*. Callers must still call :func:`check_url`
before each request. With a proxy, the resolver checks the proxy's address.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.resolver import DefaultResolver
from yarl import URL

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

_DENY: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.ip_network(net), label)
    for net, label in (
        ("0.0.0.0/8", "this-host"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local (cloud metadata)"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("255.255.255.255/32", "broadcast"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "IPv4-compatible (deprecated)"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "discard-only"),
        ("2001::/23", "IETF special-purpose (incl. Teredo)"),
        ("2001:db8::/32", "documentation"),
        ("fc00::/7", "unique-local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)
# Second net: whatever the stdlib classifies as non-public.
_FLAGS = ("unspecified", "loopback", "link_local", "multicast", "private", "reserved")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_HEX_CHARS = frozenset("0123456789abcdefx.")
MAX_URL_CHARS = 8192  # servers refuse longer request lines; and check_url keeps what it saw
MAX_HOST_NAME_CHARS = 253  # RFC 1035, without a trailing dot
MAX_LABEL_CHARS = 63
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NAME_LABEL = re.compile(r"[A-Za-z0-9_-]+")  # letters, digits, hyphens; underscores exist too


class BlockedAddress(ValueError):
    """An outbound URL or address is refused by the SSRF policy."""


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address carried by an IPv4-mapped, NAT64 or 6to4 address."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr.sixtofour


def check_address(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    """Raise :class:`BlockedAddress` unless ``ip`` is a public unicast address."""
    if isinstance(ip, str):
        try:
            addr: IPAddress = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            raise BlockedAddress(f"{ip!r} is not a valid IP address") from None
    else:
        addr = ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id is not None:
            addr = ipaddress.IPv6Address(addr.compressed.split("%", 1)[0])
        inner = _embedded_v4(addr)
        if inner is not None:
            try:
                check_address(inner)
            except BlockedAddress as exc:
                msg = f"address {addr} embeds IPv4 {inner}: {exc}"
                raise BlockedAddress(msg) from None
            return
    for net, label in _DENY:
        if addr.version == net.version and addr in net:
            raise BlockedAddress(f"address {addr} is in a {label} network ({net})")
    for flag in _FLAGS:
        if getattr(addr, f"is_{flag}"):
            msg = f"address {addr} is {flag.replace('_', '-')} (not public)"
            raise BlockedAddress(msg)
    if isinstance(addr, ipaddress.IPv6Address) and addr.is_site_local:
        raise BlockedAddress(f"address {addr} is site-local (not public)")


def _parse_legacy_v4(host: str) -> ipaddress.IPv4Address | None:
    """Parse the ``inet_aton`` grammar: 1-4 dot parts, decimal/octal/hex each."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        try:
            if part.startswith("0x"):
                digits = part[2:]
                if "x" in digits:
                    return None
                values.append(int(digits, 16) if digits else 0)
            elif len(part) > 1 and part[0] == "0":
                values.append(int(part[1:], 8))
            else:
                values.append(int(part, 10))
        except ValueError:
            return None
    *head, last = values
    if any(v > 0xFF for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    value = last
    for i, v in enumerate(head):
        value |= v << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def parse_ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Return the address if ``host`` is any IP-literal form, else ``None``."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return None
    host = unquote(host).lower()
    host = host.removesuffix(".")
    if not host or not set(host) <= _HEX_CHARS or not host[0].isdigit():
        return None
    addr = _parse_legacy_v4(host)
    if addr is None:
        try:  # whatever else the platform's inet_aton would accept
            addr = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return addr


def check_host(host: str) -> None:
    """Raise :class:`BlockedAddress` unless ``host`` (as yarl gives it: IDNA-encoded)
    is an IP literal or a name a resolver can look up: labels of 1-63 letters, digits,
    hyphens or underscores, at most 253 characters, ``xn--`` labels valid Punycode, and
    a last label that is not a number (``1.2.3.256`` is no address and no name)."""
    if parse_ip_literal(host) is not None:
        return
    shown = repr(host[:80])
    name = host.removesuffix(".")
    if len(name) > MAX_HOST_NAME_CHARS:
        raise BlockedAddress(f"host {shown} is over {MAX_HOST_NAME_CHARS} characters")
    labels = name.split(".")
    for label in labels:
        if not label:
            raise BlockedAddress(f"host {shown} has an empty label")
        if len(label) > MAX_LABEL_CHARS:
            raise BlockedAddress(f"host {shown} has a label over {MAX_LABEL_CHARS} characters")
        if not _NAME_LABEL.fullmatch(label):
            bad = next(c for c in label if not _NAME_LABEL.fullmatch(c))
            raise BlockedAddress(f"host {shown} contains {bad!r}: a host name has only "
                                 "letters, digits, hyphens and underscores")
        if label[:4].lower() == "xn--":
            try:
                label.encode("ascii").decode("idna")
            except UnicodeError:
                raise BlockedAddress(f"host {shown}: {label!r} is not a valid IDNA "
                                     "label") from None
    if labels[-1].isdigit():
        raise BlockedAddress(f"host {shown} ends in a number but is not an IPv4 address")


def _check_authority(url: str) -> None:
    """What yarl normalises away: a bracketed host that is not IPv6, a port that is not
    a number (``: 80``, ``+80``)."""
    try:
        netloc = urlsplit(url).netloc.rpartition("@")[2]
    except ValueError as exc:
        raise BlockedAddress(f"invalid URL: {exc}") from None
    port = ""
    if netloc.startswith("["):
        inside, _, after = netloc[1:].partition("]")
        if not isinstance(parse_ip_literal(inside), ipaddress.IPv6Address):
            raise BlockedAddress(f"host [{inside[:80]}] is not an IPv6 address")
        if after and after[0] != ":":
            raise BlockedAddress(f"unexpected {after[:20]!r} after the host [{inside}]")
        port = after[1:]
    elif ":" in netloc:
        port = netloc.rpartition(":")[2]
    if port and not (port.isascii() and port.isdigit()):
        raise BlockedAddress(f"port {port[:20]!r} is not a number")


@functools.lru_cache(maxsize=4096)  # a pure function of its arguments; refusals are not kept
def check_url(url: str, *, allow_private: bool) -> None:
    """Raise :class:`BlockedAddress` if ``url`` must not be fetched."""
    if len(url) > MAX_URL_CHARS:
        raise BlockedAddress(f"URL is over {MAX_URL_CHARS} characters")
    control = _CONTROL.search(url)
    if control is not None:
        raise BlockedAddress(f"URL contains the control character {control.group()!r}")
    try:
        parsed = URL(url)
        _ = parsed.explicit_port  # yarl validates the port lazily on some versions
    except (ValueError, TypeError) as exc:
        raise BlockedAddress(f"invalid URL {url!r}: {exc}") from None
    scheme = parsed.scheme.lower()
    if scheme not in ("http", "https"):
        raise BlockedAddress(f"URL scheme {scheme!r} is not allowed (only http/https)")
    host = parsed.raw_host
    if not host:
        raise BlockedAddress(f"URL {url!r} has no host")
    _check_authority(url)
    check_host(host)
    if parsed.port == 0:
        raise BlockedAddress("port 0 cannot be connected to")
    if allow_private:
        return
    name = unquote(host).rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        raise BlockedAddress(f"host {host!r} is a localhost name")
    addr = parse_ip_literal(host)
    if addr is not None:
        check_address(addr)


class GuardedResolver(AbstractResolver):
    """Resolver that fails if any address a name resolves to is denied."""

    def __init__(self, allow_private: bool = False) -> None:
        self._allow_private = allow_private
        self._inner: AbstractResolver | None = None  # created lazily (needs a loop)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = DefaultResolver()
        results = await self._inner.resolve(host, port, family)
        if not self._allow_private:
            for result in results:
                try:
                    check_address(result["host"])
                except BlockedAddress as exc:
                    msg = f"host {host!r} resolves to a blocked address: {exc}"
                    raise BlockedAddress(msg) from None
        return results

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


class _GuardedConnector(aiohttp.TCPConnector):
    """TCPConnector that also checks IP-literal hosts (which skip the resolver)."""

    def __init__(
        self, *, allow_private: bool, resolver: GuardedResolver, **kwargs: Any
    ) -> None:
        super().__init__(resolver=resolver, **kwargs)
        self._guard_allow_private = allow_private
        self._guard_resolver = resolver

    async def connect(
        self, req: ClientRequest, *args: Any, **kwargs: Any
    ) -> Connection:
        host = req.url.raw_host
        if not self._guard_allow_private and host:
            addr = parse_ip_literal(host)
            if addr is not None:
                check_address(addr)
        return await super().connect(req, *args, **kwargs)

    async def close(self, *, abort_ssl: bool = False) -> None:
        await super().close(abort_ssl=abort_ssl)
        await self._guard_resolver.close()


def guarded_connector(allow_private: bool, **kwargs: Any) -> aiohttp.TCPConnector:
    """A TCPConnector that enforces the address policy at connect time."""
    if "resolver" in kwargs:
        raise TypeError("guarded_connector() sets its own resolver")
    resolver = GuardedResolver(allow_private=allow_private)
    return _GuardedConnector(allow_private=allow_private, resolver=resolver, **kwargs)


async def read_capped(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """At most ``max_bytes`` of an outbound response's body: an answer is never read whole."""
    chunks: list[bytes] = []
    remaining = max_bytes
    while remaining > 0:
        chunk = await resp.content.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
