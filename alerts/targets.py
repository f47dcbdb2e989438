"""Where cargowatch may send a shipper's events: the SSRF guard of webhook (and e-mail) targets.

A shipper chooses the URL; without a guard, its key could make the engine POST to the
engine's own network (127.0.0.1, 169.254.169.254 metadata, 10/8, ...), and read the answer
back through ``last_error``. So a target host is resolved and *every* address it resolves
to must be global: loopback, link-local, private, unique-local, shared (100.64/10),
unspecified, multicast, reserved and documentation addresses are refused, also when
written in decimal, hex, octal or IPv4-mapped/-compatible/NAT64/6to4 IPv6 forms (the
resolver turns those into the address they mean; the embedded IPv4 address is checked).

- at subscription: ``check_url`` raises ``RefusedTarget`` (the API's 422); a name that
  does not resolve yet is accepted (it is checked again at each delivery);
- at each delivery: ``pin`` resolves again and returns the address to connect to, so a
  name that changes its answer after the check (DNS rebinding) cannot slip through; the
  request goes to that address with the original ``Host`` and TLS server name.
  Redirects are never followed (a 3xx is a failed attempt).
- at each e-mail: ``host_addresses`` checks the SMTP relay the same way; the mail goes to
  the first checked address (``alerts.mail_smtp``).

The operator allows private targets with ``CARGOWATCH_ALLOW_PRIVATE_TARGETS=1`` (tests,
receivers on premises).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

from core.errors import InvalidInput, Unavailable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]

REFUSED = "refused target"  # what a shipper reads in last_error
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class RefusedTarget(InvalidInput):
    """The target resolves to an address cargowatch does not send to."""


class UnresolvedTarget(Unavailable):
    """The target's name does not resolve now."""


def system_resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (``getaddrinfo``: also decimal/hex IPv4 forms)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(ip))
    return None


def is_forbidden(address: str | IPAddress) -> bool:
    """True for an address a shipper's target must not resolve to."""
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None and is_forbidden(inner):
            return True
    return not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified


def _parts(url: str) -> tuple[SplitResult, str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedTarget("the target must be an http(s) URL with a host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise RefusedTarget("the target's port is not a number from 1 to 65535") from exc
    return parts, parts.hostname, port


@dataclass(frozen=True, slots=True)
class Pinned:
    """A delivery's request: ``url`` names the checked address; ``host`` is the original
    ``Host`` header; ``sni`` the TLS server name (https) to verify the certificate against."""

    url: str
    host: str
    sni: str | None


@dataclass(frozen=True, slots=True)
class TargetGuard:
    """``allow_private`` turns the guard off (the operator's setting)."""

    allow_private: bool = False
    resolve: Resolver = field(default=system_resolve, repr=False)

    def addresses(self, url: str) -> list[str]:
        """The addresses of ``url``'s host, all checked; ``RefusedTarget`` if any is
        forbidden, ``UnresolvedTarget`` if the name does not resolve."""
        _, host, port = _parts(url)
        return self.host_addresses(host, port)

    def host_addresses(self, host: str, port: int) -> list[str]:
        """The addresses of ``host`` (a server of another protocol: the SMTP relay), all
        checked as for a URL's host; the first is the one to connect to."""
        try:
            found = list(self.resolve(host, port))
        except (OSError, UnicodeError) as exc:
            raise UnresolvedTarget(f"{host} does not resolve") from exc
        if not found:
            raise UnresolvedTarget(f"{host} does not resolve")
        if not self.allow_private and any(is_forbidden(a) for a in found):
            raise RefusedTarget(
                "the target resolves to a loopback, private, link-local or otherwise "
                "non-public address (the operator may allow them: "
                "CARGOWATCH_ALLOW_PRIVATE_TARGETS=1)"
            )
        return found

    def check_url(self, url: str) -> None:
        """At subscription: refuse a target that resolves to a forbidden address. A name
        that does not resolve now is accepted; every delivery checks again."""
        if self.allow_private:
            _parts(url)
            return
        try:
            self.addresses(url)
        except UnresolvedTarget:
            return

    def pin(self, url: str) -> Pinned:
        """At delivery: the request to make, to an address checked just now."""
        parts, host, _ = _parts(url)
        if self.allow_private:
            return Pinned(url, parts.netloc.rpartition("@")[2], None)
        address = self.addresses(url)[0].split("%", 1)[0]
        literal = f"[{address}]" if ":" in address else address
        netloc = literal if parts.port is None else f"{literal}:{parts.port}"
        pinned = parts._replace(netloc=netloc).geturl()
        host_header = parts.netloc.rpartition("@")[2]
        return Pinned(pinned, host_header, host if parts.scheme == "https" else None)
