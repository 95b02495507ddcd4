"""Bind the listening socket (plain TCP; TLS happens per connection, later).

Engine-neutral and done once, before any fork, so workers share one socket. Binding
never uses SO_REUSEPORT: a second server on the same port must fail loudly with
"port in use", not silently share the traffic.
"""
from __future__ import annotations

import errno
import socket

from ..errors import StartupError


def bind_listener(host: str, port: int, backlog: int) -> socket.socket:
    family, address = _resolve(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host in ("::", "[::]"):
            # "::" means every address, IPv4 included (dual stack), as users expect.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise StartupError(_bind_error(host, port, exc)) from None
    sock.set_inheritable(True)
    return sock


def _resolve(host: str, port: int) -> tuple[int, tuple]:
    bare = host.strip("[]")
    try:
        infos = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV)
    except socket.gaierror as exc:
        raise StartupError(f"server.host: cannot resolve {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    return family, address


def _bind_error(host: str, port: int, exc: OSError) -> str:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"server.port: {where} is already in use by another process"
    if exc.errno == errno.EACCES:
        return f"server.port: permission denied binding {where} (ports below 1024 need root)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"server.host: {host} is not an address of this machine"
    return f"server.host: cannot listen on {where}: {exc.strerror}"

