"""What every engine does the same way around a connection: its environ, the PROXY
header, the end of a TLS session, and the open-file limit. Engine-neutral: no waiting
happens here (each engine waits its own way), only calls on sockets that are ready or
bounded by their own timeouts.
"""
from __future__ import annotations

import _socket
import _ssl
import contextlib
import logging
import re
import resource
import socket
import struct
import time
from typing import Any, Callable, Optional

from .. import metrics
from ..config import ServerConfig
from ..logs import WSGI_ERRORS, RateLimitedLog
from ..proxyprotocol import ProxyHeaderError
from ..proxyprotocol import read_header as read_proxy_header
from ..tls.facts import PROXIED_BY_KEY
from ..tls.refusals import Refusal, explain

log = logging.getLogger("securewsgi.server")
# Refused handshakes are triggered by clients at will: rate-limit their log lines.
handshake_log = RateLimitedLog(logging.getLogger("securewsgi.handshake"))

_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only

# Lingering close, as Apache's lingering_close and nginx's lingering_time /
# lingering_timeout: after the last response on a connection whose client may still be
# sending (a body the app did not read), read and discard for at most LINGER_TIME
# seconds, giving up after LINGER_TIMEOUT seconds without data, or LINGER_BYTES bytes.
# Closing with unread data makes the kernel send a reset, and the client then reports
# an error instead of the response it was sent.
LINGER_TIME = 30.0
LINGER_TIMEOUT = 5.0
LINGER_BYTES = 64 * 1024 * 1024


def address(addr: Any) -> str:
    """`host:port`, with brackets around an IPv6 host."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = addr[0]
        return f"[{host}]:{addr[1]}" if ":" in str(host) else f"{host}:{addr[1]}"
    return str(addr)


def base_environ(listener: socket.socket, config: ServerConfig) -> dict[str, Any]:
    """The environ keys that are the same for every request of this worker."""
    host, port = listener.getsockname()[:2]
    return {
        "wsgi.version": (1, 0),
        "wsgi.errors": WSGI_ERRORS,
        "wsgi.multithread": True,
        "wsgi.multiprocess": config.workers > 1,
        "wsgi.run_once": False,
        "SERVER_NAME": host,
        "SERVER_PORT": str(port),
        "GATEWAY_INTERFACE": "CGI/1.1",
    }


def client_environ(base: dict[str, Any], facts: dict[str, Any], addr: Any) -> dict[str, Any]:
    """`base` plus the TLS facts of this connection and the client address."""
    env = dict(base)
    env.update(facts)
    env["REMOTE_ADDR"] = str(addr[0]) if isinstance(addr, tuple) else ""
    env["REMOTE_PORT"] = str(addr[1]) if isinstance(addr, tuple) else ""
    return env


def read_proxied_address(sock: Any, peer: str, addr: Any, timeout: float
                         ) -> tuple[Optional[Any], dict[str, Any]]:
    """(client address, environ additions) from the PROXY header a trusted proxy sends
    before the TLS handshake; (None, {}) when it is missing or malformed.

    Every connection that came through the PROXY protocol is marked with
    `PROXIED_BY_KEY`, including headers without an address (v1 `UNKNOWN`, v2 `LOCAL`
    or `AF_UNSPEC`): HAProxy sends those for unix-socket front ends and non-IP
    families too, not only for its health checks, so the TLS peer on such a
    connection is a client like any other, and nothing it writes in a header may
    vouch for another identity. Without an address, REMOTE_ADDR stays the proxy's.
    """
    try:
        announced = read_proxy_header(sock, time.monotonic() + timeout)
    except (ProxyHeaderError, OSError) as exc:
        proxy_header_refused(peer, exc)
        return None, {}
    return (addr if announced is None else announced), {PROXIED_BY_KEY: peer}


def handshake_failed(peer: str, exc: Optional[BaseException] = None,
                     reason: Optional[str] = None, sock: Any = None) -> None:
    """One rate-limited line for a refused TLS handshake: `exc` is what the handshake
    raised (turned into a plain reason, a fix and the client's certificate by
    `refusals.explain`), or `reason` says it when nothing raised (a deadline).

    `sock`, the connection's TLS socket, is where the evidence is read from, only now
    that the handshake has failed: the certificate chain OpenSSL tried to verify, the
    SNI name, our own certificate and CAs (`ServerFacts` on its context), and whether
    the client sent anything at all. A client that spoke plain HTTP is answered with a
    plain-text 400 on it. The text line keeps `TLS handshake failed: client=ADDR` first;
    JSON logs get every fact as its own key."""
    refusal = Refusal(reason) if reason is not None else explain(exc, **_evidence(sock, exc))
    metrics.recorder.handshake_refused(refusal.reason)  # counted even when the line is not
    handshake_log.info("TLS handshake failed: client=%s %s", peer, refusal.text(),
                       extra=refusal.fields(peer))
    if refusal.plain_http and sock is not None:  # after the line: it is there once answered
        answer_plain_http(sock)


def _evidence(sock: Any, exc: Optional[BaseException]) -> dict[str, Any]:
    if sock is None:
        return {}
    eof = isinstance(exc, (ConnectionError, EOFError)) or "EOF" in str(
        getattr(exc, "reason", "") or "") or "EOF occurred" in str(exc)
    return {"server": getattr(getattr(sock, "context", None), "securewsgi_server", None),
            "chain": peer_chain(sock), "sni": getattr(sock, "securewsgi_sni", None),
            "silent": received_nothing(sock) if eof else None}


def peer_chain(sock: Any) -> list[bytes]:
    """DER certificates the client sent, leaf first, after a failed handshake: the chain
    OpenSSL built while verifying them (kept also when verification failed); after a
    finished handshake (a resumed session refused), the peer certificate."""
    getter = getattr(getattr(sock, "_sslobj", None), "get_verified_chain", None)
    chain = None
    if getter is not None:
        with contextlib.suppress(Exception):  # a private CPython API: never fail here
            chain = getter()
    if chain:
        return [cert.public_bytes(_ssl.ENCODING_DER) for cert in chain]
    try:
        der = sock.getpeercert(binary_form=True)
    except (AttributeError, ValueError, OSError):
        return []
    return [der] if der else []


_TCP_INFO = getattr(socket, "TCP_INFO", None)  # Linux only
_DATA_SEGS_IN = 152  # offset of tcpi_data_segs_in in struct tcp_info (Linux 4.6+)


def received_nothing(sock: Any) -> Optional[bool]:
    """Did the client close without sending a single byte (None: cannot tell)?"""
    if _TCP_INFO is None:
        return None
    try:
        info = _socket.socket.getsockopt(sock, socket.IPPROTO_TCP, _TCP_INFO, 256)
    except (OSError, TypeError):
        return None
    if len(info) < _DATA_SEGS_IN + 4:
        return None
    return struct.unpack_from("I", info, _DATA_SEGS_IN)[0] == 0


_HOST = re.compile(rb"\r\nhost:[ \t]*([A-Za-z0-9.:\[\]-]{1,255})[ \t]*\r\n", re.I)


def answer_plain_http(sock: Any) -> None:
    """Answer plain HTTP on a TLS port in plain HTTP, as nginx does (its 497): a short
    400 saying this port speaks HTTPS. OpenSSL consumed the start of the request line;
    the rest is read first (so closing sends a FIN, not a reset that would destroy the
    answer) and its Host names the https:// URL to use."""
    try:
        pending = _socket.socket.recv(sock, 65536, socket.MSG_DONTWAIT)
    except OSError:
        pending = b""
    match = _HOST.search(pending)
    target = f"https://{match.group(1).decode('ascii')}/" if match else "https://"
    body = f"This port speaks HTTPS: use {target} instead of http://.\n".encode()
    head = (f"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    with contextlib.suppress(OSError):
        _socket.socket.send(sock, head + body)
    shutdown_write(sock)


def proxy_header_refused(peer: str, reason: object) -> None:
    handshake_log.info("PROXY header refused: proxy=%s reason=%s", peer, reason)


def tune_accepted(sock: Any) -> None:
    """Each response leaves in one write; never hold it back for an ACK (Nagle)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def quick_ack(sock: Any) -> None:
    """ACK the client's last handshake flight at once: a client that writes its request
    right after its Finished (with Nagle on) otherwise waits for our delayed ACK (40 ms)
    whenever the server has nothing to send in between (no session ticket)."""
    if _TCP_QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


def send_close_notify(sock: Any) -> None:
    """End the TLS session with a close_notify alert, without waiting for the peer's.

    RFC 8446 6.1: each party must send close_notify before closing its write side;
    without it clients report a truncation attack or "unexpected EOF" (OpenSSL 3), and
    `ab` counts every such response as failed. On a non-blocking socket `unwrap()`
    sends ours and then stops where it would wait for the peer's; anything going wrong
    here only means the peer is already gone.
    """
    if not hasattr(sock, "unwrap"):
        return
    try:
        sock.setblocking(False)
        sock.unwrap()
    except (OSError, ValueError):
        pass


def discard_some(sock: _socket.socket) -> int:
    """Read and drop what the kernel holds for `sock` (at most 64 KiB), below any TLS
    or green wrapper (`sock` is, or derives from, the OS-level socket type): the
    session is over, and lingering only keeps the client from a reset. The count of
    bytes, 0 at end of stream; `BlockingIOError` when nothing is there yet."""
    return len(_socket.socket.recv(sock, 65536))


def shutdown_write(sock: _socket.socket) -> None:
    """Half-close TCP (FIN after our last bytes) while we keep reading."""
    with contextlib.suppress(OSError):
        _socket.socket.shutdown(sock, socket.SHUT_WR)


def periodic_tasks(every: Optional[list[tuple[float, Callable[[], None]]]],
                   on_connections: Optional[Callable[[int, int], None]],
                   counts: Callable[[], tuple[int, int]]
                   ) -> list[tuple[float, Callable[[], None]]]:
    """What an engine runs periodically: the caller's tasks, the flush of suppressed
    handshake lines, and (for metrics) its connection counts."""
    tasks = [(5.0, handshake_log.flush), *(every or [])]
    if on_connections is not None:
        tasks.append((metrics.REFRESH_SECONDS, lambda: on_connections(*counts())))
    return tasks


def no_address(_address: str) -> bool:
    """The exemption test of a listener without trusted proxies: nobody is exempt."""
    return False


def close_quietly(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def run_task(task: Callable[[], None]) -> None:
    """A periodic or signal-triggered task (reload, log flush): its failure is logged,
    never the end of the loop that runs it."""
    try:
        task()
    except Exception:
        log.exception("background task %s failed", getattr(task, "__qualname__", task))


def raise_file_limit(needed: int) -> None:
    """Each connection is a file descriptor: lift the soft limit towards `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed or soft == resource.RLIM_INFINITY:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        log.warning("open-file limit is %d (hard limit), below the %d that "
                    "server.max_connections needs; raise it (ulimit -n, LimitNOFILE=)",
                    target, needed)
