"""What keeps the api jobs' secrets and connections safe: redaction of echoed secrets, and an address
check at connect time (a name on the allow-list may not lead to a private address)."""

from __future__ import annotations

import base64
import html
import ipaddress
import json
import re
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import quote, quote_plus

import httpcore
import httpx

from jobs.errors import JobInputError, RejectedError, ToolkitError

REDACTED = "[redacted]"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DisallowedHost(JobInputError):
    """The request (or a redirect) goes to a host, or an address, that is not on the allow-list."""


class Redactor:
    """Hides secrets from what a job keeps or logs, in the forms a server may echo them: as they are,
    URL-encoded, base64, JSON- or HTML-escaped, in any case; the credentials after an auth scheme too."""

    def __init__(self, secrets: Iterable[str]) -> None:
        values = {part for value in secrets for part in (value, *value.split(" ", 1)[1:]) if part.strip()}
        self.forms = sorted({form for value in values for form in encodings(value)}, key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, self.forms)), re.IGNORECASE) if self.forms else None

    def text(self, text: str, cut: bool = False) -> str:
        """`text` with every secret replaced; `cut`: it was truncated, so hide a secret's start at its end."""
        if self.pattern is None:
            return text
        text = self.pattern.sub(REDACTED, text)
        lowered = text.lower()
        for form in self.forms if cut else ():
            for size in range(len(form) - 1, 2, -1):
                if lowered.endswith(form[:size].lower()):
                    return text[:-size] + REDACTED
        return text

    def json(self, content: bytes) -> Any:
        """A JSON body, parsed, with every secret redacted (keys and escaped forms too); ValueError if
        it isn't JSON, or becomes something else once redacted."""
        try:
            normalized = json.dumps(json.loads(content), ensure_ascii=False)  # escapes undone
        except RecursionError:
            raise ValueError("nested too deep") from None
        return json.loads(self.text(normalized))

    @contextmanager
    def guarding(self) -> Iterator[None]:
        """Re-raise an error whose message holds a secret with that message redacted (same kind of error)."""
        try:
            yield
        except Exception as exc:
            message = self.text(str(exc))
            if message == str(exc):
                raise
            if isinstance(exc, ToolkitError):
                raise type(exc)(message) from None
            raise RejectedError(f"{type(exc).__name__}: {message}") from None


def encodings(value: str) -> set[str]:
    """The forms of `value` a server may echo."""
    raw = value.encode()
    forms = {value, quote(value), quote(value, safe=""), quote_plus(value), quote_plus(value, safe="")}
    forms |= {html.escape(value), json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    for encoded in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
        forms |= {encoded, encoded.rstrip("=")}
    return forms


class CheckedAddresses(httpcore.SyncBackend):
    """Connects only to public addresses, or to addresses on the allow-list themselves: the very address
    connected to is the one checked, so a DNS answer that changes after any earlier check can't pass."""

    def __init__(self, allowed_hosts: Iterable[str]) -> None:
        self.allowed = {address for host in allowed_hosts if (address := as_address(host)) is not None}

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"{host}: {exc}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        permitted = [address for address in addresses if self.permits(address)]
        if not permitted:
            raise DisallowedHost(
                f"api: {host} is at {', '.join(addresses)}: not a public address, and not on "
                "RQKIT_API_ALLOWED_HOSTS itself"
            )
        for address in permitted[:-1]:  # in the resolver's order, as a plain connection would
            with suppress(httpcore.ConnectError):
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
        return super().connect_tcp(permitted[-1], port, timeout, local_address, socket_options)

    def permits(self, address: str) -> bool:
        """Public (global unicast), or allowed by address: never loopback, private, link-local,
        unique-local, multicast, reserved or unspecified unless allowed."""
        ip = as_address(address.split("%", 1)[0])
        return ip is not None and (ip in self.allowed or (ip.is_global and not ip.is_multicast))


def as_address(host: str) -> IPAddress | None:
    """`host` as an IP address (brackets allowed; an IPv4-mapped one as IPv4), or None for a name."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return mapped or ip


def checked_transport(allowed_hosts: Iterable[str]) -> httpx.HTTPTransport:
    """httpx's own transport, on a connection pool that checks every address it connects to, for
    every request and redirect. No proxy from the environment: the address checked must be the peer."""
    transport = httpx.HTTPTransport(trust_env=False)
    # httpx takes no network backend; its pool is the one place to give it (httpcore's public API).
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(), network_backend=CheckedAddresses(allowed_hosts)
    )
    return transport
