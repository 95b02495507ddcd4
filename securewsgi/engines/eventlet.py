"""The eventlet engine: the one module that imports eventlet.

eventlet is in maintenance mode and being retired; every eventlet-specific line is
here, and `threads.py` serves the same `Config` without it.

What eventlet provides: green sockets, a pool of greenthreads, timeouts and signals.
What it no longer provides: `eventlet.wsgi`. Its protocol parses leniently and slowly
(see http11.py), and its server loop dies on an accept() error (EMFILE under an fd
flood), keeps the listener open while draining (new connections hang, then reset) and
cannot handshake per connection with a deadline (`GreenSSLSocket.accept()` defers the
handshake to the first read, bounded only per read). So the loop is ours and short:

1. accept on the *plain* listening socket, retrying transient errors; admit the
   connection to the budget of unfinished handshakes (`admission.py`), dropping the
   oldest unfinished one when that budget is full;
2. per connection, in its own greenthread of a pool of `max_connections`: wrap with
   the current SSLContext and finish the handshake under a total `handshake_timeout`
   (a silent or slow client only costs its own greenthread); failures are one
   rate-limited INFO line with a plain reason;
3. compute the TLS facts once (`tls.facts`), then `http11.Connection` serves requests;
4. end with a TLS close_notify, lingering while the client may still be sending.

When the pool is full of established connections, accept() waits: new connections
queue in the kernel backlog and nothing already open suffers.
"""
from __future__ import annotations

import _socket
import errno
import logging
import signal
import socket
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

from .. import metrics
from ..config import ServerConfig
from ..http11 import AccessLogger, Connection
from ..tls.context import ServerTLS
from ..tls.facts import connection_environ, plain_environ
from ..wsgitypes import WSGIApp
from . import common
from .admission import HandshakeBudget

log = logging.getLogger("securewsgi.server")

TLSGetter = Callable[[], ServerTLS]
Task = Callable[[], None]

# Errors from accept() that mean "try again shortly", not "the server is broken".
_TRANSIENT_ACCEPT = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                     errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EAGAIN}
_TICK_SECONDS = 0.5
# The real socket class, even after monkey_patch() replaced `socket.socket`.
_OS_SOCKET = eventlet.patcher.original("socket").socket
_PLAIN_SSL_SOCKET = GreenSSLSocket.__mro__[1]  # the standard library's ssl.SSLSocket


def prepare_process(config: ServerConfig, forked: bool = False) -> None:
    """Make blocking calls in the user's app cooperative, before the app is imported.

    In a worker forked from the supervisor, start from a fresh hub: a hub's state does
    not survive fork (oslo.service and gunicorn do the same).
    """
    if forked:
        eventlet.hubs.use_hub()
    if config.monkey_patch:
        eventlet.monkey_patch()


class _TLSSocket(GreenSSLSocket):
    """A server-side green TLS socket whose `shutdown()` keeps the TLS state.

    A graceful stop shuts idle connections down so that their reader wakes up.
    `SSLSocket.shutdown` drops the SSL object first, and the waking reader then dies
    with "Read on closed or unwrapped SSL socket"; shutting down only the TCP layer
    makes it see a clean end of stream instead.
    """

    def shutdown(self, how: int) -> None:
        _OS_SOCKET.shutdown(self, how)

    def unwrap(self) -> Any:
        """Send close_notify (non-blocking: see common.send_close_notify). eventlet's
        own unwrap() returns a new GreenSocket for this same descriptor, which closes
        it when garbage-collected, under our feet."""
        return _PLAIN_SSL_SOCKET.unwrap(self)


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
        self.pool = eventlet.GreenPool(config.max_connections)
        self.connections: set[Connection] = set()
        self.handshaking: dict[Connection, Any] = {}  # -> its greenthread
        self.budget = HandshakeBudget(min(config.max_handshakes, config.max_connections),
                                      config.max_handshakes_per_ip, proxy_from or common.no_address)
        self.base = common.base_environ(listener, config)
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
            conn = Connection(sock, self.app, self.base, self.config, self.access_log,
                              common.address(addr))
            admitted, victim = self.budget.admit(conn, str(addr[0]))
            if not admitted:
                common.close_quietly(sock)
                continue
            if victim is not None:
                self._drop(victim)
            self.handshaking[conn] = None
            thread = self.pool.spawn(self._connection, conn, addr)  # waits while full
            if conn in self.handshaking:
                self.handshaking[conn] = thread

    def _drop(self, conn: Connection) -> None:
        """End an unfinished handshake that the budget gave up for a newer one."""
        thread = self.handshaking.pop(conn, None)
        if thread is not None:
            thread.kill()  # a started one closes its socket on the way out
        common.close_quietly(conn.sock)  # one that never started cannot

    def _accept_failed(self, exc: OSError) -> None:
        """EMFILE and friends: wait a moment instead of ending the server (an error
        from accept() would otherwise end the accept loop, and with it the worker)."""
        if not self._warned_accept:
            self._warned_accept = True
            log.warning("accept() failed (%s); retrying (raise the open-file limit or "
                        "lower server.max_connections)", errno.errorcode.get(exc.errno))
        eventlet.sleep(0.05)

    # ----------------------------------------------------------------- a connection

    def _connection(self, conn: Connection, addr: Any) -> None:
        self.connections.add(conn)
        try:
            base = self._start(conn, addr)
            if base is not None and not conn.closing:
                conn.base = base
                conn.serve()
                _end_session(conn)
        finally:
            self._handshake_over(conn)
            self.connections.discard(conn)
            common.close_quietly(conn.sock)

    def _handshake_over(self, conn: Connection) -> None:
        self.handshaking.pop(conn, None)
        self.budget.finished(conn)

    def _start(self, conn: Connection, addr: Any) -> Optional[dict]:
        """PROXY header (from trusted proxies) and TLS handshake: the connection's
        environ, or None when it must end."""
        base = self.base
        if self.proxy_from is not None and self.proxy_from(str(addr[0])):
            addr, marks = common.read_proxied_address(conn.sock, conn.peer, addr,
                                                      self.config.handshake_timeout)
            if addr is None:
                return None
            base = {**base, **marks}
            conn.peer = common.address(addr)
        facts = self._handshake(conn)
        self._handshake_over(conn)
        return None if facts is None else common.client_environ(base, facts, addr)

    def _handshake(self, conn: Connection) -> Optional[dict]:
        """Wrap and handshake in this greenthread, under a total deadline: per-read
        timeouts alone would let a client that sends one byte a second hold it forever."""
        conn.sock.settimeout(self.config.socket_timeout)
        common.tune_accepted(conn.sock)
        state = self.tls()
        ctx = state.context
        if ctx is None:
            return plain_environ()
        timeout = self.config.handshake_timeout
        try:
            tls = GreenSSLSocket(conn.sock, server_side=True,
                                 do_handshake_on_connect=False, _context=ctx)
            tls.__class__ = _TLSSocket
            conn.sock = tls  # closed by _connection's finally, whatever happens
            with eventlet.Timeout(timeout):
                tls.do_handshake()
            common.quick_ack(tls)
            facts = connection_environ(tls, state.revoked)
            metrics.recorder.handshake_completed()
            return facts
        except eventlet.Timeout:
            common.handshake_failed(conn.peer, reason=f"no TLS handshake within {timeout:g}s")
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            common.handshake_failed(conn.peer, exc, sock=conn.sock)
        return None

    # ---------------------------------------------------------------------- stopping

    def stop_accepting(self) -> None:
        """Refuse new connections now: the listener stays open while draining
        otherwise, and new connections would hang, then be reset."""
        self.accepting = False
        common.close_quietly(self.listener)
        for conn in list(self.connections):
            conn.closing = True
            if conn.idle:
                _shutdown(conn.sock)

    def in_flight(self) -> int:
        return sum(1 for conn in self.connections if not conn.idle)

    def connection_counts(self) -> tuple[int, int]:
        """(open connections, those with a request in progress), for metrics."""
        return len(self.connections), self.in_flight()

    def drain(self, timeout: float) -> bool:
        """Wait for the connections to end; False when `timeout` ran out first."""
        with eventlet.Timeout(timeout, False):
            self.pool.waitall()
            return True
        return False


def _end_session(conn: Connection) -> None:
    """close_notify, then linger while the client may still be sending."""
    common.send_close_notify(conn.sock)
    if not conn.unread_body:
        return
    # The OS-level socket: a plain connection's GreenSocket keeps it in `fd`; a TLS
    # socket derives from it.
    sock = conn.sock if isinstance(conn.sock, _socket.socket) else conn.sock.fd
    common.shutdown_write(sock)
    deadline = time.monotonic() + common.LINGER_TIME
    received = 0
    while received < common.LINGER_BYTES:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            eventlet.hubs.trampoline(sock.fileno(), read=True,
                                     timeout=min(common.LINGER_TIMEOUT, left),
                                     timeout_exc=socket.timeout)
            count = common.discard_some(sock)
        except BlockingIOError:
            continue
        except OSError:  # socket.timeout included: the client went quiet
            return
        if count == 0:
            return
        received += count


def _shutdown(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def run(listener: socket.socket, app: WSGIApp, config: ServerConfig,
        tls: TLSGetter, *, access_log: Optional[AccessLogger] = None,
        proxy_from: Optional[Callable[[str], bool]] = None,
        on_signal: Optional[dict[int, Task]] = None,
        every: Optional[list[tuple[float, Task]]] = None,
        at_start: Optional[list[Task]] = None,
        on_connections: Optional[Callable[[int, int], None]] = None) -> int:
    """Serve `app` on `listener` until SIGTERM/SIGINT, then stop gracefully; exit code.

    `tls` is asked for the current TLS material at every new connection (so a reload
    takes effect for new connections only). `on_signal` maps other signals (SIGHUP) to
    tasks, and `every` lists (seconds, task) to run periodically; both run in their own
    greenthreads, so a slow task never blocks serving. `at_start` tasks run once,
    after the signal handlers are installed. With `proxy_from`, connections from
    addresses it accepts must start with a PROXY protocol header. `on_connections`
    is told (open connections, those with a request in progress) every
    `metrics.REFRESH_SECONDS`.
    """
    common.raise_file_limit(config.max_connections + 64)
    server = _Server(listener, app, config, tls, access_log, proxy_from)
    every = common.periodic_tasks(every, on_connections, server.connection_counts)
    stop = eventlet.event.Event()
    accept_loop = eventlet.spawn(server.accept_forever)
    accept_loop.link(lambda _gt: stop.ready() or stop.send("the accept loop ended"))
    _install_signal_handlers(stop, on_signal or {})
    for task in at_start or []:
        eventlet.spawn_n(common.run_task, task)
    helpers = [eventlet.spawn(_tick, stop)]
    for seconds, task in every:
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
        eventlet.spawn_n(common.run_task, tasks[signum])

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_stop)
    for signum in tasks:
        signal.signal(signum, on_task)




def _repeat(seconds: float, task: Task) -> None:
    while True:
        eventlet.sleep(seconds)
        common.run_task(task)


def _tick(stop: Any) -> None:
    """Keep the hub waking up so signal handlers run promptly: with no timers it may
    sleep up to 60 s, and work scheduled from a signal handler would wait as long."""
    while not stop.ready():
        eventlet.sleep(_TICK_SECONDS)
