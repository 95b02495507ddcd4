"""The PROXY protocol (v1 text, v2 binary) that HAProxy and cloud load balancers put in
front of a passed-through TLS connection, so the backend knows the real client address.

Read before the TLS handshake, and only from `identity.trusted_proxies`: anyone else
could claim any address. Exactly the header's bytes are consumed, so the TLS handshake
that follows sees its ClientHello untouched.
Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""
from __future__ import annotations

import ipaddress
import socket
import struct
import time
from typing import Any, Optional

from .errors import SecureWSGIError

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # "PROXY TCP6 <39> <39> <5> <5>\r\n"
V2_MAX_BODY = 4096  # addresses plus TLVs; HAProxy sends far less


class ProxyHeaderError(SecureWSGIError, ValueError):
    """Missing or malformed PROXY header: the connection is closed."""


Address = Optional[tuple]  # (ip, port) of the real client, or None: no IP address given
# (v1 UNKNOWN; v2 LOCAL, AF_UNSPEC or AF_UNIX), and the connection keeps the proxy's


def read_header(sock: Any, deadline: float) -> Address:
    """Consume one PROXY header from `sock`; the source address it announces.

    Reads exact byte counts, never more than the header, so the TLS handshake that
    follows finds its ClientHello untouched: 8 bytes tell v1 from v2; v2 then states its
    length; a v1 line (at most 107 bytes) is read up to its CRLF.
    """
    start = _recv_exact(sock, 8, deadline)
    if start == V2_SIGNATURE[:8]:
        fixed = start + _recv_exact(sock, 8, deadline)
        if fixed[:12] != V2_SIGNATURE:
            raise ProxyHeaderError("malformed PROXY v2 signature")
        length = struct.unpack("!H", fixed[14:16])[0]
        if length > V2_MAX_BODY:
            raise ProxyHeaderError("PROXY v2 header too long")
        return parse_v2(fixed, _recv_exact(sock, length, deadline) if length else b"")
    if start.startswith(b"PROXY "):
        line = start
        while not line.endswith(b"\r\n"):
            if len(line) >= V1_MAX:
                raise ProxyHeaderError("malformed PROXY v1 header")
            line += _recv_exact(sock, 1, deadline)
        return parse_v1(line)
    raise ProxyHeaderError("expected a PROXY protocol header from a trusted proxy")


def parse_v1(line: bytes) -> Address:
    """`PROXY TCP4 src dst sport dport\\r\\n` (or `PROXY UNKNOWN ...\\r\\n`)."""
    if not line.endswith(b"\r\n") or len(line) > V1_MAX:
        raise ProxyHeaderError("malformed PROXY v1 header")
    parts = line[:-2].split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return None
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("malformed PROXY v1 header")
    try:
        source = ipaddress.ip_address(parts[2].decode("ascii"))
        ipaddress.ip_address(parts[3].decode("ascii"))
        port = _port(parts[4])
        _port(parts[5])
    except (ValueError, UnicodeDecodeError):
        raise ProxyHeaderError("malformed address in PROXY v1 header") from None
    if (source.version == 4) != (parts[1] == b"TCP4"):
        raise ProxyHeaderError("PROXY v1 address family mismatch")
    return (str(source), port)


def _port(text: bytes) -> int:
    if not text.isdigit() or (len(text) > 1 and text.startswith(b"0")) or int(text) > 65535:
        raise ValueError("bad port")
    return int(text)


def parse_v2(fixed: bytes, body: bytes) -> Address:
    """The 16-byte fixed part (signature, version/command, family, length) and body."""
    version_command, family = fixed[12], fixed[13]
    if version_command >> 4 != 2:
        raise ProxyHeaderError("unsupported PROXY protocol version")
    command = version_command & 0x0F
    if command == 0x0:  # LOCAL: the proxy's own connection (a health check, say)
        return None
    if command != 0x1:
        raise ProxyHeaderError("unknown PROXY v2 command")
    if family == 0x11 and len(body) >= 12:  # TCP over IPv4
        source, _dest, port, _dport = struct.unpack("!4s4sHH", body[:12])
        return (str(ipaddress.IPv4Address(source)), port)
    if family == 0x21 and len(body) >= 36:  # TCP over IPv6
        source, _dest, port, _dport = struct.unpack("!16s16sHH", body[:36])
        return (str(ipaddress.IPv6Address(source)), port)
    if family in (0x00, 0x31, 0x32):  # UNSPEC, or UNIX stream/datagram: no IP address
        return None
    raise ProxyHeaderError("unsupported PROXY v2 address family")


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ProxyHeaderError("PROXY header not received in time")
    return left


def _recv_exact(sock: Any, size: int, deadline: float) -> bytes:
    parts = []
    while size:
        sock.settimeout(_remaining(deadline))
        try:
            data = sock.recv(size)
        except socket.timeout:
            raise ProxyHeaderError("PROXY header not received in time") from None
        if not data:
            raise ProxyHeaderError("connection closed inside the PROXY header")
        parts.append(data)
        size -= len(data)
    return b"".join(parts)
