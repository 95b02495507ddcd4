"""The eventlet engine: the one module that imports eventlet.

eventlet is in maintenance mode; keeping every eventlet-specific line here means
another engine can serve the same `Config` one day by implementing `run()`.

How a connection flows (see FACTS.md for the traps each step avoids):

1. `eventlet.wsgi.server` accepts on a *plain* listening socket through
   `_ResilientListener`, whose `accept()` survives EMFILE and friends (FACTS 10).
2. It spawns our protocol in a greenthread of the pool. The protocol wraps the socket
   with the current `SSLContext` and completes the handshake *there*, under a total
   deadline of `handshake_timeout` (FACTS 5), so a silent or slow client only ever
   costs its own greenthread. Failures are logged once, at INFO, with a plain reason
   (FACTS 11: eventlet would print a traceback per failure).
3. The TLS facts of the connection are computed once (`tlsfacts`) and merged into the
   environ of each request; everything else is `eventlet.wsgi` as users know it.
"""
from __future__ import annotations

import errno
import logging
import signal
import socket
import ssl
import warnings
from typing import Any, Callable, Optional

import greenlet

with warnings.catch_warnings():  # eventlet warns about its own deprecation on import
    warnings.simplefilter("ignore")
    import eventlet
    import eventlet.event
    import eventlet.greenio
    import eventlet.hubs
    import eventlet.patcher
    import eventlet.wsgi
    from eventlet.green.ssl import GreenSSLSocket

import contextlib

from .config import ServerConfig
from .logs import RateLimitedLog
from .tlsfacts import connection_environ, handshake_failure_reason, plain_environ

log = logging.getLogger("securewsgi.server")
# Refused handshakes are triggered by clients at will: rate-limit their log lines.
handshake_log = RateLimitedLog(logging.getLogger("securewsgi.handshake"))
Task = Callable[[], None]

ContextGetter = Callable[[], Optional[ssl.SSLContext]]
WSGIApp = Callable[..., Any]

# Errors from accept() that mean "try again shortly", not "the server is broken".
_TRANSIENT_ACCEPT = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                     errno.ECONNABORTED, errno.EPROTO, errno.EPERM}
# eventlet.wsgi writes the access line through `log.info(log_format % {...})`; our
# own access log (accesslog.py) replaces it, so the line is a constant to drop.
_DROP_ACCESS_LINE = "securewsgi: eventlet access line"
_TICK_SECONDS = 0.5
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


class _TLSConnection(GreenSSLSocket):
    """A server-side green TLS socket whose `shutdown()` keeps the TLS state.

    eventlet's graceful stop calls `shutdown()` on idle keep-alive sockets so that
    their reader wakes up. `SSLSocket.shutdown` drops the SSL object first, and the
    waking reader then dies with "Read on closed or unwrapped SSL socket" (FACTS 14).
    Shutting down only the TCP layer makes the reader see a clean EOF instead.
    """

    def shutdown(self, how: int) -> None:
        _OS_SOCKET.shutdown(self, how)


class _ResilientListener:
    """The listening socket as eventlet.wsgi.server sees it: accept() never gives up
    on a transient error (FACTS 10), it waits a moment and tries again."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = eventlet.greenio.GreenSocket(sock)
        self._warned = False

    def accept(self) -> Any:
        while True:
            try:
                return self._sock.accept()
            except OSError as exc:
                if exc.errno not in _TRANSIENT_ACCEPT:
                    raise
                if not self._warned:
                    log.warning("accept() failed (%s); retrying", errno.errorcode.get(
                        exc.errno, exc.errno))
                    self._warned = True
                eventlet.sleep(0.05)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _EventletLog:
    """Routes eventlet.wsgi's own log calls: app tracebacks and I/O errors to our error
    log, its access line to nowhere (accesslog.py writes a richer one)."""

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        if msg == _DROP_ACCESS_LINE:
            return
        if msg.startswith("Traceback"):  # an exception escaped the app: a 500 was sent
            log.error("application error: %s", msg.rstrip())
        else:  # "wsgi starting up on http://..." and friends: ours are clearer
            log.debug("eventlet: %s", msg.rstrip())

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        log.error("%s", msg.rstrip())

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        log.debug("%s", msg.rstrip())

    def write(self, msg: str, *args: Any) -> None:
        self.info(msg)


class _Connections:
    """Counts requests being answered, so a forced stop can say how many it cut."""

    def __init__(self) -> None:
        self.requests = 0

    def in_flight(self) -> int:
        return self.requests


def _make_protocol(context: ContextGetter, config: ServerConfig,
                   connections: _Connections) -> type:
    handshake_timeout = config.handshake_timeout

    class TLSProtocol(eventlet.wsgi.HttpProtocol):
        """eventlet's HTTP/1.1 protocol, entered only after our own TLS handshake."""

        conn_environ: dict[str, Any]

        def __init__(self, conn_state: list[Any], server: Any) -> None:
            ctx = context()
            if ctx is None:
                self.conn_environ = plain_environ()
            elif not self._handshake(conn_state, ctx):
                return
            super().__init__(conn_state, server)

        def handle_one_response(self) -> None:
            connections.requests += 1
            try:
                super().handle_one_response()
            finally:
                connections.requests -= 1

        def _handshake(self, conn_state: list[Any], ctx: ssl.SSLContext) -> bool:
            peer = conn_state[0]
            try:
                tls = GreenSSLSocket(conn_state[1], server_side=True,
                                     do_handshake_on_connect=False, _context=ctx)
                tls.__class__ = _TLSConnection
                conn_state[1] = tls  # the server's cleanup closes conn_state[1] (FACTS 6)
                with eventlet.Timeout(handshake_timeout):
                    tls.do_handshake()
                self.conn_environ = connection_environ(tls)
                return True
            except eventlet.Timeout:
                reason = f"no TLS handshake within {handshake_timeout:g}s"
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                reason = handshake_failure_reason(exc)
            handshake_log.info("TLS handshake failed: client=%s reason=%s", _address(peer),
                               reason)
            conn_state[1].close()
            return False

        def handle(self) -> None:
            """Requests until the connection ends; a peer's TLS alert or reset ends it
            quietly (eventlet would let the error escape and print a traceback)."""
            try:
                super().handle()
            except socket.timeout:
                log.debug("idle connection timed out: client=%s", _address(self.client_address))
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                log.info("connection ended by an error: client=%s reason=%s",
                         _address(self.client_address), handshake_failure_reason(exc))
            self.close_connection = 1

        def get_environ(self) -> dict[str, Any]:
            environ = super().get_environ()
            environ.update(self.conn_environ)
            environ["SERVER_PROTOCOL"] = self.request_version  # eventlet always says 1.0
            return environ

    return TLSProtocol


def _address(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = addr[0]
        return f"[{host}]:{addr[1]}" if ":" in str(host) else f"{host}:{addr[1]}"
    return str(addr)


def run(listener: socket.socket, app: WSGIApp, config: ServerConfig,
        context: ContextGetter, *, on_signal: Optional[dict[int, Task]] = None,
        every: Optional[list[tuple[float, Task]]] = None,
        at_start: Optional[list[Task]] = None) -> int:
    """Serve `app` on `listener` until SIGTERM/SIGINT, then stop gracefully; exit code.

    `context` is asked for the current SSLContext at every new connection (so a reload
    takes effect for new connections only). `on_signal` maps other signals (SIGHUP) to
    tasks, and `every` lists (seconds, task) to run periodically; both run in their own
    greenthreads, so a slow task never blocks serving. `at_start` tasks run once,
    after the signal handlers are installed.
    """
    connections = _Connections()
    stop = eventlet.event.Event()
    green_listener = _ResilientListener(listener)
    server = eventlet.spawn(
        eventlet.wsgi.server,
        green_listener,
        app,
        log=_EventletLog(),
        log_format=_DROP_ACCESS_LINE,
        max_size=config.max_connections,
        max_http_version=config.max_http_version,
        protocol=_make_protocol(context, config, connections),
        minimum_chunk_size=config.minimum_chunk_size,
        log_x_forwarded_for=config.log_x_forwarded_for,
        keepalive=config.keepalive,
        url_length_limit=config.url_length_limit,
        debug=False,  # never send tracebacks to clients (FACTS 8)
        socket_timeout=config.socket_timeout,
        capitalize_response_headers=config.capitalize_response_headers,
    )
    server.link(lambda _gt: stop.ready() or stop.send("the server loop ended"))
    _install_signal_handlers(stop, on_signal or {})
    for task in at_start or []:
        eventlet.spawn_n(_run_task, task)
    helpers = [eventlet.spawn(_tick, stop)]
    for seconds, task in [(5.0, handshake_log.flush), *(every or [])]:
        helpers.append(eventlet.spawn(_repeat, seconds, task))
    why = stop.wait()
    for helper in helpers:
        helper.kill()
    if why == "the server loop ended":
        log.error("the accept loop ended unexpectedly; exiting")
        return 1
    return _stop_gracefully(server, green_listener, config.shutdown_timeout, connections, why)


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


def _stop_gracefully(server: Any, listener: _ResilientListener, timeout: float,
                     connections: _Connections, why: str) -> int:
    log.info("%s received: no new connections; waiting up to %gs for %d in-flight "
             "request(s)", why, timeout, connections.in_flight())
    server.kill()  # stops accepting, closes idle keep-alive connections, drains the rest
    listener.close()  # refuse new connections now, not after the drain (FACTS 14)
    finished = False
    with eventlet.Timeout(timeout, False):
        with contextlib.suppress(greenlet.GreenletExit):
            server.wait()
        finished = True
    if not finished:
        log.warning("shutdown_timeout (%gs) reached: cutting %d in-flight request(s)",
                    timeout, connections.in_flight())
    log.info("stopped")
    return 0
