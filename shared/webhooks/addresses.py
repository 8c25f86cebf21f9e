"""Which URLs may be subscribed, and which addresses a delivery may connect to.

Webhooks make the service send requests where a caller says, so a caller must not point it
at what only the service can reach: its own loopback, the private network it runs in, a
cloud's metadata address (link-local), multicast or reserved ranges. Such addresses are
refused when an endpoint is created and again when a delivery resolves the host (a name
may resolve elsewhere by then: DNS rebinding). The delivery connects to the address it
checked, never resolving twice. WEBHOOK_ALLOW_PRIVATE turns the address checks off (local
development and tests, whose receivers listen on 127.0.0.1).

`parse_url` raises `InvalidWebhookUrl`; `check_host` and `resolve` raise
`WebhookAddressRefused` (or `InvalidWebhookUrl` for a name that does not resolve).
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from dataclasses import dataclass

from shared.errors import InvalidWebhookUrl, WebhookAddressRefused

#: The longest URL an endpoint may have.
MAX_URL_LENGTH = 2048
SCHEMES = ("http", "https")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Target:
    """A URL split for a delivery: scheme, host (a name, or an address without brackets),
    port, and the path with its query (what the request line carries)."""

    url: str
    scheme: str
    host: str
    port: int
    path: str


def parse_url(raw: object) -> Target:
    """`raw` as a webhook URL: an absolute http or https URL with a host, no user or
    password, no fragment, ASCII only (international names in their xn-- form), at most
    `MAX_URL_LENGTH` characters. Raises `InvalidWebhookUrl` saying what is wrong."""
    if not isinstance(raw, str) or not raw:
        raise InvalidWebhookUrl("url must be a non-empty string")
    if len(raw) > MAX_URL_LENGTH:
        raise InvalidWebhookUrl(f"url must be at most {MAX_URL_LENGTH} characters")
    if not raw.isascii() or any(ch <= " " or ch == "\x7f" for ch in raw):
        raise InvalidWebhookUrl(
            "url must be ASCII without spaces or control characters (percent-encode the"
            " path, and give an international host name in its xn-- form)"
        )
    try:
        parts = urllib.parse.urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise InvalidWebhookUrl(f"url is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidWebhookUrl("url must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise InvalidWebhookUrl("url must not carry a user name or password")
    if parts.fragment or raw.endswith("#"):
        raise InvalidWebhookUrl("url must not have a fragment (#...)")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise InvalidWebhookUrl("url must name a host")
    if port == 0:
        raise InvalidWebhookUrl("url must not name port 0")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(
        url=raw,
        scheme=scheme,
        host=host,
        port=port or (443 if scheme == "https" else 80),
        path=path,
    )


def literal_address(host: str) -> Address | None:
    """`host` as an IP address when it is written as one (IPv6 without brackets)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def refusal(address: Address) -> str | None:
    """Why `address` may not receive webhooks (None: it may): anything but a global unicast
    address, including IPv6 forms that embed a refused IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is not None:
            reason = refusal(embedded)
            return None if reason is None else f"{reason} (embedded in {address})"
    for kind, flag in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
    ):
        if flag:
            return f"{address} is a {kind} address"
    if not address.is_global:
        return f"{address} is not a public address"
    return None


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def resolve(host: str, port: int) -> list[Address]:
    """The addresses `host` resolves to (itself when it is an address), in the resolver's
    order. Raises `InvalidWebhookUrl` when it does not resolve."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidWebhookUrl(f"the host {host} does not resolve: {exc}") from None
    found: list[Address] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        # Drop an IPv6 scope (fe80::1%eth0): the address is what is checked.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        raise InvalidWebhookUrl(f"the host {host} resolves to no address")
    return found


def check_addresses(host: str, addresses: list[Address]) -> None:
    """Raises `WebhookAddressRefused` when any of `addresses` (those of `host`) is refused:
    one refused address is enough, since a connection could reach it."""
    for address in addresses:
        reason = refusal(address)
        if reason is not None:
            shown = "" if literal_address(host) is not None else f"{host} resolves to "
            raise WebhookAddressRefused(
                f"webhooks are not sent to private, loopback, link-local, multicast or"
                f" reserved addresses: {shown}{reason}"
            )


def check_host(target: Target, *, allow_private: bool) -> None:
    """At creation: the URL's host must resolve, and only to addresses a delivery may reach
    (any address when `allow_private`, and then nothing is resolved). Raises
    `WebhookAddressRefused` or `InvalidWebhookUrl`."""
    if allow_private:
        return
    check_addresses(target.host, resolve(target.host, target.port))


def pinned_address(target: Target, *, allow_private: bool) -> Address:
    """At delivery: the address to connect to, the host resolved once and checked (unless
    `allow_private`). Raises `WebhookAddressRefused` or `InvalidWebhookUrl`."""
    addresses = resolve(target.host, target.port)
    if not allow_private:
        check_addresses(target.host, addresses)
    return addresses[0]
