"""The phone's sign-in link, `http://<host>:<port>/login?token=...`, and a QR code of it for the
phone's camera: printed by `mobilesd serve` on the start that generates the token, and by
`mobilesd link` whenever asked.

The link carries the access token, so it goes to the operator's terminal (stdout) only, never
through `logging`. Finding the LAN address sends no traffic: connecting a UDP socket only asks
the kernel which interface would route there.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO
from urllib.parse import quote

import segno

WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*", "[::]"})
# Any private address will do: a UDP connect() picks the route without sending a packet.
_ROUTE_PROBE = ("10.255.255.255", 1)


def _usable(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip.is_multicast)


def lan_address() -> str:
    """This machine's LAN IPv4 address, or 127.0.0.1 when it has none."""
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe,
    ):
        probe.connect(_ROUTE_PROBE)
        address = probe.getsockname()[0]
        if _usable(address):
            return address
    with contextlib.suppress(OSError):
        for *_, sockaddr in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            if _usable(str(sockaddr[0])):
                return str(sockaddr[0])
    return "127.0.0.1"


def link_host(host: str, lan: Callable[[], str] = lan_address) -> str:
    """The host part of the link for a server bound to `host` (wildcards become the LAN
    address; IPv6 literals get brackets)."""
    if host.strip() in WILDCARD_HOSTS:
        host = lan()
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    return host


def phone_url(host: str, port: int, token: str, lan: Callable[[], str] = lan_address) -> str:
    return f"http://{link_host(host, lan)}:{port}/login?token={quote(token, safe='')}"


def qr_text(url: str, out: TextIO) -> str:
    """The QR code of `url` for a terminal: half-block characters (compact), or ANSI colours
    when `out` cannot print those characters."""
    code = segno.make(url, error="m", micro=False)
    buffer = io.StringIO()
    code.terminal(out=buffer, compact=True, border=2)
    text = buffer.getvalue()
    encoding = getattr(out, "encoding", None)
    if encoding:
        try:
            text.encode(encoding)
        except (UnicodeEncodeError, LookupError):
            buffer = io.StringIO()
            code.terminal(out=buffer, border=2)
            text = buffer.getvalue()
    return text


def print_phone_link(
    host: str,
    port: int,
    token: str,
    *,
    qr: bool = True,
    out: TextIO | None = None,
    lan: Callable[[], str] = lan_address,
) -> str:
    """Print the phone link (and its QR code) to `out` (stdout); return the link."""
    out = out or sys.stdout
    url = phone_url(host, port, token, lan)
    lines = ["", "Phone: open this link, or scan the QR code, to sign in:", f"  {url}"]
    shown = link_host(host, lan).strip("[]")
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(shown).is_loopback:
            lines.append(
                "  (only this machine can open it: HOST is a loopback address; "
                "set HOST=0.0.0.0 to reach MobileSD from the phone)"
            )
    if host.strip() in WILDCARD_HOSTS and Path("/.dockerenv").exists():
        lines.append("  (inside Docker: use the address of the machine running the container)")
    print("\n".join(lines), file=out)
    if qr:
        print(qr_text(url, out), file=out, end="")
    print("Anyone with this link can use MobileSD: keep it to yourself.", file=out, flush=True)
    return url
