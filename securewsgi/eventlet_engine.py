"""The eventlet engine: the one module that imports eventlet.

eventlet is in maintenance mode; keeping every eventlet-specific line here means
another engine can serve the same `Config` one day by implementing `run()`.

What eventlet provides: green sockets, a pool of greenthreads, timeouts and signals.
What it no longer provides: `eventlet.wsgi`. Its protocol parses leniently and slowly
(see http11.py), and its server loop dies on an accept() error (FACTS 10), keeps the
listener open while draining (FACTS 14) and cannot handshake per connection with a
deadline (FACTS 5). So the loop is ours and short:

1. accept on the *plain* listening socket, retrying transient errors;
2. per connection, in its own greenthread of a pool of `max_connections`: wrap with
   the current SSLContext and finish the handshake under a total `handshake_timeout`
   (a silent or slow client only costs its own greenthread); failures are one
   rate-limited INFO line with a plain reason;
3. compute the TLS facts once (`tlsfacts`), then `http11.Connection` serves requests.

When the pool is full, accept() waits: new connections queue in the kernel backlog and
nothing already open suffers.
"""
from __future__ import annotations

import errno
import logging
import resource
import signal
import socket
import sys
import time
import warnings
from typing import Any, Callable, Optional

with warnings.catch_warnings():  # eventlet warns about its own deprecation on import
    warnings.simplefilter("ignore")
    import eventlet
    import eventlet.event
    import eventlet.greenio
    import eventlet.hubs
    import eventlet.patcher
    from eventlet.green.ssl import GreenSSLSocket

import contextlib

from .config import ServerConfig
from .http11 import AccessLogger, Connection
from .logs import RateLimitedLog
from .proxyprotocol import ProxyHeaderError
from .proxyprotocol import read_header as read_proxy_header
from .tls import ServerTLS
from .tlsfacts import (
    PROXIED_BY_KEY,
    connection_environ,
    handshake_failure_reason,
    plain_environ,
)

log = logging.getLogger("securewsgi.server")
# Refused handshakes are triggered by clients at will: rate-limit their log lines.
handshake_log = RateLimitedLog(logging.getLogger("securewsgi.handshake"))

TLSGetter = Callable[[], ServerTLS]
WSGIApp = Callable[..., Any]
Task = Callable[[], None]

# Errors from accept() that mean "try again shortly", not "the server is broken".
_TRANSIENT_ACCEPT = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                     errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EAGAIN}
_TICK_SECONDS = 0.5
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only
# The real socket class, even after monkey_patch() replaced `socket.socket`.
_OS_SOCKET = eventlet.patcher.original("socket").socket


def prepare_process(monkey_patch: bool, forked: bool = False) -> None:
    """Make blocking calls in the user's app cooperative, before the app is imported.

    In a worker forked from the supervisor, start from a fresh hub (FACTS 15).
    """
    if forked:
        eventlet.hubs.use_hub()
    if monkey_patch:
        eventlet.monkey_patch()


class _TLSSocket(GreenSSLSocket):
    """A server-side green TLS socket whose `shutdown()` keeps the TLS state.

    A graceful stop shuts idle connections down so that their reader wakes up.
    `SSLSocket.shutdown` drops the SSL object first, and the waking reader then dies
    with "Read on closed or unwrapped SSL socket" (FACTS 14); shutting down only the
    TCP layer makes it see a clean end of stream instead.
    """

    def shutdown(self, how: int) -> None:
        _OS_SOCKET.shutdown(self, how)


def _address(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = addr[0]
        return f"[{host}]:{addr[1]}" if ":" in str(host) else f"{host}:{addr[1]}"
    return str(addr)


class _Server:
    """The accept loop, the connections it owns, and how they end."""

    def __init__(self, listener: socket.socket, app: WSGIApp, config: ServerConfig,
                 tls: TLSGetter, access_log: Optional[AccessLogger],
                 proxy_from: Optional[Callable[[str], bool]] = None) -> None:
        self.listener = eventlet.greenio.GreenSocket(listener)
        self.app = app
        self.config = config
        self.tls = tls
        self.access_log = access_log
        self.proxy_from = proxy_from
        self.options = config
        self.pool = eventlet.GreenPool(config.max_connections)
        self.connections: set[Connection] = set()
        host, port = listener.getsockname()[:2]
        self.base = {
            "wsgi.version": (1, 0),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": config.workers > 1,
            "wsgi.run_once": False,
            "SERVER_NAME": host,
            "SERVER_PORT": str(port),
            "GATEWAY_INTERFACE": "CGI/1.1",
        }
        self.accepting = True
        self._warned_accept = False

    # ------------------------------------------------------------------ accepting

    def accept_forever(self) -> None:
        while self.accepting:
            try:
                sock, addr = self.listener.accept()
            except OSError as exc:
                if not self.accepting:
                    return
                if exc.errno not in _TRANSIENT_ACCEPT:
                    raise
                self._accept_failed(exc)
                continue
            self.pool.spawn_n(self._connection, sock, addr)  # waits while the pool is full

    def _accept_failed(self, exc: OSError) -> None:
        """EMFILE and friends: wait a moment instead of ending the server (FACTS 10)."""
        if not self._warned_accept:
            self._warned_accept = True
            log.warning("accept() failed (%s); retrying (raise the open-file limit or "
                        "lower server.max_connections)", errno.errorcode.get(exc.errno))
        eventlet.sleep(0.05)

    # ----------------------------------------------------------------- a connection

    def _connection(self, sock: Any, addr: Any) -> None:
        peer = _address(addr)
        conn = Connection(sock, self.app, self.base, self.options, self.access_log, peer)
        self.connections.add(conn)
        try:
            if self.proxy_from is not None and self.proxy_from(str(addr[0])):
                addr = self._proxied_address(conn, addr)
                if addr is None:
                    return
            base = self._handshake(conn, addr)
            if base is not None and not conn.closing:
                conn.base = base
                conn.serve()
        finally:
            self.connections.discard(conn)
            _close(conn.sock)

    def _proxied_address(self, conn: Connection, addr: Any) -> Any:
        """The client address a trusted proxy announces in its PROXY header (read
        before the TLS handshake); None when the header is missing or malformed."""
        deadline = time.monotonic() + self.config.handshake_timeout
        try:
            announced = read_proxy_header(conn.sock, deadline)
        except (ProxyHeaderError, OSError) as exc:
            handshake_log.info("PROXY header refused: proxy=%s reason=%s", conn.peer, exc)
            return None
        if announced is None:  # LOCAL / UNKNOWN: the proxy's own connection (health check)
            return addr
        conn.base = {**self.base, PROXIED_BY_KEY: conn.peer}
        conn.peer = _address(announced)
        return announced

    def _handshake(self, conn: Connection, addr: Any) -> Optional[dict]:
        """Wrap and handshake in this greenthread, under a total deadline (FACTS 5)."""
        conn.sock.settimeout(self.config.socket_timeout)
        # Each response leaves in one write; never hold it back for an ACK (Nagle).
        with contextlib.suppress(OSError):
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        state = self.tls()
        ctx = state.context
        if ctx is None:
            facts = plain_environ()
        else:
            timeout = self.config.handshake_timeout
            try:
                tls = GreenSSLSocket(conn.sock, server_side=True,
                                     do_handshake_on_connect=False, _context=ctx)
                tls.__class__ = _TLSSocket
                conn.sock = tls  # closed by _connection's finally, whatever happens
                with eventlet.Timeout(timeout):
                    tls.do_handshake()
                _quick_ack(tls)
                facts = connection_environ(tls, state.revoked)
            except eventlet.Timeout:
                reason = f"no TLS handshake within {timeout:g}s"
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                reason = handshake_failure_reason(exc)
            else:
                reason = ""
            if reason:
                handshake_log.info("TLS handshake failed: client=%s reason=%s", conn.peer,
                                   reason)
                return None
        base = dict(conn.base)
        base.update(facts)
        base["REMOTE_ADDR"] = str(addr[0]) if isinstance(addr, tuple) else ""
        base["REMOTE_PORT"] = str(addr[1]) if isinstance(addr, tuple) else ""
        return base

    # ---------------------------------------------------------------------- stopping

    def stop_accepting(self) -> None:
        """Refuse new connections now (FACTS 14), and end the idle ones."""
        self.accepting = False
        _close(self.listener)
        for conn in list(self.connections):
            conn.closing = True
            if conn.idle:
                _shutdown(conn.sock)

    def in_flight(self) -> int:
        return sum(1 for conn in self.connections if not conn.idle)

    def drain(self, timeout: float) -> bool:
        """Wait for the connections to end; False when `timeout` ran out first."""
        with eventlet.Timeout(timeout, False):
            self.pool.waitall()
            return True
        return False


def _quick_ack(sock: Any) -> None:
    """ACK the client's last handshake flight at once: a client that writes its request
    right after its Finished (with Nagle on) otherwise waits for our delayed ACK (40 ms)
    whenever the server has nothing to send in between (no session ticket)."""
    if _TCP_QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


def _shutdown(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _close(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.close()


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


def run(listener: socket.socket, app: WSGIApp, config: ServerConfig,
        tls: TLSGetter, *, access_log: Optional[AccessLogger] = None,
        proxy_from: Optional[Callable[[str], bool]] = None,
        on_signal: Optional[dict[int, Task]] = None,
        every: Optional[list[tuple[float, Task]]] = None,
        at_start: Optional[list[Task]] = None) -> int:
    """Serve `app` on `listener` until SIGTERM/SIGINT, then stop gracefully; exit code.

    `tls` is asked for the current TLS material at every new connection (so a reload
    takes effect for new connections only). `on_signal` maps other signals (SIGHUP) to
    tasks, and `every` lists (seconds, task) to run periodically; both run in their own
    greenthreads, so a slow task never blocks serving. `at_start` tasks run once,
    after the signal handlers are installed. With `proxy_from`, connections from
    addresses it accepts must start with a PROXY protocol header.
    """
    raise_file_limit(config.max_connections + 64)
    server = _Server(listener, app, config, tls, access_log, proxy_from)
    stop = eventlet.event.Event()
    accept_loop = eventlet.spawn(server.accept_forever)
    accept_loop.link(lambda _gt: stop.ready() or stop.send("the accept loop ended"))
    _install_signal_handlers(stop, on_signal or {})
    for task in at_start or []:
        eventlet.spawn_n(_run_task, task)
    helpers = [eventlet.spawn(_tick, stop)]
    for seconds, task in [(5.0, handshake_log.flush), *(every or [])]:
        helpers.append(eventlet.spawn(_repeat, seconds, task))
    why = stop.wait()
    for helper in helpers:
        helper.kill()
    if why == "the accept loop ended":
        try:
            accept_loop.wait()
        except Exception:
            log.exception("the accept loop ended unexpectedly; exiting")
        return 1
    log.info("%s received: no new connections; waiting up to %gs for %d in-flight "
             "request(s)", why, config.shutdown_timeout, server.in_flight())
    server.stop_accepting()
    accept_loop.kill()
    if not server.drain(config.shutdown_timeout):
        log.warning("shutdown_timeout (%gs) reached: cutting %d in-flight request(s)",
                    config.shutdown_timeout, server.in_flight())
    log.info("stopped")
    return 0


def _install_signal_handlers(stop: Any, tasks: dict[int, Task]) -> None:
    def on_stop(signum: int, _frame: Any) -> None:
        if not stop.ready():
            stop.send(signal.Signals(signum).name)

    def on_task(signum: int, _frame: Any) -> None:
        # Not in the signal handler itself: that may interrupt any greenthread.
        eventlet.spawn_n(_run_task, tasks[signum])

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_stop)
    for signum in tasks:
        signal.signal(signum, on_task)


def _run_task(task: Task) -> None:
    try:
        task()
    except Exception:
        log.exception("background task %s failed", getattr(task, "__qualname__", task))


def _repeat(seconds: float, task: Task) -> None:
    while True:
        eventlet.sleep(seconds)
        _run_task(task)


def _tick(stop: Any) -> None:
    """Keep the hub waking up so signal handlers run promptly (FACTS 13)."""
    while not stop.ready():
        eventlet.sleep(_TICK_SECONDS)

