"""The threads engine: OS threads and epoll, no eventlet and no monkey-patching.

For services leaving eventlet (`server.engine: threads`). The app runs in a bounded pool
of `server.threads` threads, so blocking I/O in it (database drivers, `requests`)
simply blocks its own thread. A connection holds a thread only while it has work:

* every connection waits in one epoll set, armed one-shot: when it becomes readable
  (or writable), exactly one thread of the pool is woken for it, takes it, works
  until the work would block, then re-arms it. There is no hand-off between a
  selector thread and the pool: the thread that sees the event does the work (the
  leader/follower pattern), which saves two thread switches per request;
* TLS handshakes run non-blocking, step by step, so a silent or slow client costs a
  file descriptor, not a thread; so does a request head that trickles in, and a
  keep-alive connection waiting for its next request;
* once a whole request head is in, the thread serves that request with blocking,
  time-limited reads and writes (`http11.Connection.handle`), as the app expects;
* deadlines (handshake, request head, idle keep-alive, lingering close) are checked
  by the main thread, which also owns signals and periodic tasks.

A connection is owned by at most one thread at a time (`_Conn.busy`, under its lock);
the main thread ends only connections nobody owns. Admission of unfinished handshakes
is shared with the eventlet engine (`admission.py`).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import select
import signal
import socket
import ssl
import threading
import time
from typing import Any, Callable, Optional

from .. import metrics
from ..config import ServerConfig
from ..http11 import AccessLogger, Connection, Refusal
from ..tls.context import ServerTLS
from ..tls.facts import connection_environ, plain_environ
from ..wsgitypes import WSGIApp
from . import common
from .admission import HandshakeBudget

log = logging.getLogger("securewsgi.server")

TLSGetter = Callable[[], ServerTLS]
Task = Callable[[], None]

_TRANSIENT_ACCEPT = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                     errno.ECONNABORTED, errno.EPROTO, errno.EPERM}
_ACCEPT_BATCH = 64  # connections accepted per wake-up before others get a turn
_POLL_SECONDS = 0.5  # how often an idle pool thread looks at the stop flag
_HANDOFF_SECONDS = 0.01  # a leader busy this long gets a spare polling in its place
_WATCH_SECONDS = 0.005
_M_ARENA_MAX = -8  # glibc malloc.h
_IN = select.EPOLLIN | select.EPOLLONESHOT | select.EPOLLRDHUP
_OUT = select.EPOLLOUT | select.EPOLLONESHOT

# What a connection is waiting for.
PROXY, HANDSHAKE, HEAD, LINGER = "proxy", "handshake", "head", "linger"


def prepare_process(config: ServerConfig, forked: bool = False) -> None:
    """No event loop to renew after fork, nothing to patch; only glibc's malloc to
    tame. It gives each thread that allocates an arena of its own (up to 8 per core),
    and keeps what each arena once held: with a pool of threads the resident size
    then grows with the busiest moment the worker has seen. Two arenas are plenty
    when the GIL lets one thread run Python at a time (the usual advice for threaded
    Python servers is MALLOC_ARENA_MAX=2; an explicit MALLOC_ARENA_MAX wins)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_ARENA_MAX, 2)


class _Conn:
    """One connection and what it waits for."""

    __slots__ = ("addr", "busy", "closed", "deadline", "doomed", "fd", "http",
                 "lingered", "lock", "pending", "phase", "revoked", "sock", "started")

    def __init__(self, sock: socket.socket, addr: Any, http: Connection) -> None:
        self.sock: Any = sock
        self.fd = sock.fileno()
        self.addr = addr
        self.http = http
        self.phase = PROXY
        self.lock = threading.Lock()
        self.busy = False
        self.closed = False
        self.doomed = False  # dropped by the handshake budget while a thread had it
        self.deadline = 0.0
        self.revoked: frozenset = frozenset()
        self.started = 0.0  # when the current request head began to arrive
        self.lingered = 0
        # Bytes the TLS layer already decrypted and holds (none on a plain socket).
        self.pending: Callable[[], int] = _nothing


class _Server:
    """The epoll set, the connections in it, and the pool threads working on them."""

    def __init__(self, listener: socket.socket, app: WSGIApp, config: ServerConfig,
                 tls: TLSGetter, access_log: Optional[AccessLogger],
                 proxy_from: Optional[Callable[[str], bool]]) -> None:
        self.listener = listener
        self.listener.setblocking(False)
        self.app = app
        self.config = config
        self.tls = tls
        self.access_log = access_log
        self.proxy_from = proxy_from
        self.base = common.base_environ(listener, config)
        self.budget = HandshakeBudget(min(config.max_handshakes, config.max_connections),
                                      config.max_handshakes_per_ip, proxy_from or common.no_address)
        self.epoll = select.epoll()
        self.conns: dict[int, _Conn] = {}
        self.accepting = True
        self.stopped = False
        self.listener_fd = listener.fileno()
        self.epoll.register(self.listener_fd, select.EPOLLIN | select.EPOLLONESHOT)
        self._warned_accept = False
        self._warned_full = False
        # One thread polls at a time (the leader) and serves what it gets itself; the
        # others wait as spares. Handing every event to another thread would make the
        # threads take turns at the GIL for each request, which costs more than the
        # request. When the leader is held up (a slow app, a blocking call) for
        # HANDOFF_SECONDS, the watcher wakes a spare to poll in its place.
        self.turn = threading.Condition(threading.Lock())
        self.pollers = 0
        self.busy_since: dict[int, float] = {}  # thread id -> when its current work began
        self.threads = [threading.Thread(target=self._work, name=f"securewsgi-{n}",
                                         daemon=True) for n in range(config.threads)]
        self.watcher = threading.Thread(target=self._watch, name="securewsgi-watcher",
                                        daemon=True)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()
        self.watcher.start()

    # ------------------------------------------------------------ the pool's loop

    def _work(self) -> None:
        poll = self.epoll.poll
        turn = self.turn
        me = threading.get_ident()
        busy = self.busy_since
        while not self.stopped:
            with turn:
                while self.pollers and not self.stopped:
                    turn.wait(_POLL_SECONDS)  # a spare: someone else polls
                self.pollers += 1
            try:
                events = poll(_POLL_SECONDS, 1)
            except OSError:  # the epoll set was closed at the very end
                return
            finally:
                with turn:
                    self.pollers -= 1
            for fd, _mask in events:
                busy[me] = time.monotonic()
                try:
                    if fd == self.listener_fd:
                        self._accept_some()
                    else:
                        self._on_event(fd)
                except Exception:  # never lose a pool thread
                    log.exception("unexpected error in the threads engine")
                finally:
                    del busy[me]

    def _watch(self) -> None:
        """Wake a spare to poll when nobody polls because every working thread has
        been at its work for HANDOFF_SECONDS (a blocking app, a slow client)."""
        busy = self.busy_since
        while not self.stopped:
            time.sleep(_WATCH_SECONDS)
            if self.pollers or not busy:
                continue
            try:
                newest = max(busy.values())
            except ValueError:  # emptied meanwhile
                continue
            if time.monotonic() - newest >= _HANDOFF_SECONDS and \
                    len(busy) < len(self.threads):
                with self.turn:
                    if not self.pollers:
                        self.turn.notify()

    def _on_event(self, fd: int) -> None:
        conn = self.conns.get(fd)
        if conn is None:
            return  # an event for a connection that ended meanwhile
        with conn.lock:
            if conn.busy or conn.closed:
                return  # a stale event: the owner re-arms when it is done
            conn.busy = True
        self._advance(conn)

    def _release(self, conn: _Conn, events: int = 0) -> None:
        """Give up ownership; with `events`, wait for them (re-armed after release,
        so the next event always finds the connection free)."""
        with conn.lock:
            conn.busy = False
            doomed = conn.doomed
        if doomed:
            self._take_and_close(conn)
            return
        if events:
            with contextlib.suppress(OSError, ValueError):  # ended by the main thread
                self.epoll.modify(conn.fd, events)

    # ------------------------------------------------------------------ accepting

    def _accept_some(self) -> None:
        try:
            for _ in range(_ACCEPT_BATCH):
                if len(self.conns) >= self.config.max_connections:
                    self._pool_full()
                    return  # re-armed by the main thread once there is room
                try:
                    sock, addr = self.listener.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if not self.accepting:
                        return  # the listener was closed by a graceful stop meanwhile
                    if exc.errno not in _TRANSIENT_ACCEPT:
                        raise
                    self._accept_failed(exc)
                    break
                self._admit(sock, addr)
        finally:
            if self.accepting and len(self.conns) < self.config.max_connections:
                with contextlib.suppress(OSError, ValueError):
                    self.epoll.modify(self.listener_fd, select.EPOLLIN | select.EPOLLONESHOT)

    def _pool_full(self) -> None:
        if not self._warned_full:
            self._warned_full = True
            log.warning("server.max_connections (%d) reached: new connections wait in "
                        "the listen backlog", self.config.max_connections)

    def rearm_listener(self) -> None:
        """Called by the main thread: accept again once connections ended."""
        if self.accepting and len(self.conns) < self.config.max_connections:
            with contextlib.suppress(OSError, ValueError):
                self.epoll.modify(self.listener_fd, select.EPOLLIN | select.EPOLLONESHOT)

    def _accept_failed(self, exc: OSError) -> None:
        """EMFILE and friends: wait a moment instead of ending the server."""
        if not self._warned_accept:
            self._warned_accept = True
            log.warning("accept() failed (%s); retrying (raise the open-file limit or "
                        "lower server.max_connections)", errno.errorcode.get(exc.errno))
        time.sleep(0.05)

    def _admit(self, sock: socket.socket, addr: Any) -> None:
        sock.setblocking(False)
        http = Connection(sock, self.app, self.base, self.config, self.access_log,
                          common.address(addr))
        conn = _Conn(sock, addr, http)
        admitted, victim = self.budget.admit(conn, str(addr[0]))
        if not admitted:
            common.close_quietly(sock)
            return
        if victim is not None:
            self._drop(victim)
        common.tune_accepted(sock)
        conn.busy = True
        self.conns[conn.fd] = conn
        try:
            self.epoll.register(conn.fd, select.EPOLLONESHOT)  # armed on release
        except OSError:
            self._close(conn)
            return
        conn.deadline = time.monotonic() + self.config.handshake_timeout
        if self.proxy_from is not None and self.proxy_from(str(addr[0])):
            self._release(conn, _IN)  # the header is read once it arrives
        else:
            # Its first handshake step waits for epoll like every other step, instead
            # of running here: an accept batch would otherwise hold the leader for a
            # handshake's worth of crypto per connection while other events wait.
            self._start_tls(conn)
            self._release(conn, _IN)

    def _drop(self, victim: _Conn) -> None:
        """End an unfinished handshake that the budget gave up for a newer one."""
        with victim.lock:
            if victim.busy:
                victim.doomed = True  # its owner closes it on release
                return
        self._take_and_close(victim)

    # ----------------------------------------------------------- one connection

    def _advance(self, conn: _Conn) -> None:
        """Work on an owned connection until it must wait or end."""
        try:
            if conn.phase == PROXY:
                self._read_proxy_header(conn)
            if conn.phase == HANDSHAKE and not self._handshake_step(conn):
                return
            if conn.phase == HEAD:
                self._serve(conn)
            elif conn.phase == LINGER:
                self._linger(conn)
        except _Ended:
            pass
        except Exception:
            log.exception("unexpected error on connection %s", conn.http.peer)
            self._close(conn)

    def _read_proxy_header(self, conn: _Conn) -> None:
        """A trusted proxy's PROXY header: it arrives with the connection, so reading
        it blocking (under the handshake deadline) costs a thread only briefly."""
        sock = conn.sock
        addr, marks = common.read_proxied_address(
            sock, conn.http.peer, conn.addr, max(0.0, conn.deadline - time.monotonic()))
        if addr is None:
            self._close(conn)
            raise _Ended()
        sock.setblocking(False)
        conn.addr = addr
        conn.http.base = {**self.base, **marks}
        conn.http.peer = common.address(addr)
        self._start_tls(conn)

    def _start_tls(self, conn: _Conn) -> None:
        state = self.tls()
        if state.context is None:
            self._handshake_done(conn, plain_environ())
            return
        conn.sock = state.context.wrap_socket(conn.sock, server_side=True,
                                              do_handshake_on_connect=False)
        conn.http.sock = conn.sock
        conn.pending = conn.sock.pending
        conn.revoked = state.revoked
        conn.phase = HANDSHAKE

    def _handshake_step(self, conn: _Conn) -> bool:
        """One non-blocking step; True when the handshake is complete."""
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._release(conn, _IN)
            return False
        except ssl.SSLWantWriteError:
            self._release(conn, _OUT)
            return False
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self._handshake_failed(conn, exc)
            return False
        try:
            facts = connection_environ(conn.sock, conn.revoked)
        except ValueError as exc:  # a resumed session whose certificate is no longer good
            self._handshake_failed(conn, exc)
            return False
        common.quick_ack(conn.sock)
        metrics.recorder.handshake_completed()
        self._handshake_done(conn, facts)
        return True

    def _handshake_done(self, conn: _Conn, facts: dict) -> None:
        self.budget.finished(conn)
        conn.http.base = common.client_environ(conn.http.base, facts, conn.addr)
        conn.phase = HEAD
        conn.deadline = time.monotonic() + conn.http.idle_timeout()

    def _handshake_failed(self, conn: _Conn, exc: BaseException) -> None:
        common.handshake_failed(conn.http.peer, exc, sock=conn.sock)
        self._close(conn)

    def _serve(self, conn: _Conn) -> None:
        """Read what arrived; answer every complete request; then wait again."""
        http = conn.http
        while True:
            try:
                head = http.take_head()
            except Refusal as refusal:
                self._end(conn, refusal)
                return
            if head is None:
                if http.closing:
                    self._end(conn)
                    return
                received = self._receive(conn)
                if received is None:
                    return  # waiting again, or ended
                continue
            # The socket stays non-blocking: `Connection.send` waits only when the
            # socket buffer is full, and a body read sets its own timeout.
            keep = http.handle(head)
            sock = conn.sock
            if sock.gettimeout() != 0.0:
                sock.setblocking(False)
            if not keep or http.closing:
                self._end(conn)
                return
            conn.started = 0.0
            if b"\r\n\r\n" not in http.buf and not conn.pending():
                # The client reads our answer before it writes again: waiting in
                # epoll costs less than a read that finds nothing (a system call
                # and an exception per request).
                self._wait_for_head(conn)
                return

    def _receive(self, conn: _Conn) -> Optional[int]:
        """Non-blocking read into the connection's buffer; None after re-arming (no
        data yet) or ending (end of stream, error)."""
        http = conn.http
        try:
            data = conn.sock.recv(65536)
        except (ssl.SSLWantReadError, BlockingIOError):
            self._wait_for_head(conn)
            return None
        except ssl.SSLWantWriteError:
            self._release(conn, _OUT)
            return None
        except OSError:  # reset, TLS alert, closed
            self._close(conn)
            return None
        if not data:
            self._close(conn, notify=True)
            return None
        if not http.buf:
            conn.started = time.monotonic()
        http.buf += data
        return len(data)

    def _wait_for_head(self, conn: _Conn) -> None:
        http = conn.http
        now = time.monotonic()
        if http.buf.strip(b"\r\n"):
            if not conn.started:
                conn.started = now
            conn.deadline = conn.started + self.config.header_timeout
        else:
            conn.deadline = now + http.idle_timeout()
        self._release(conn, _IN)

    def _end(self, conn: _Conn, refusal: Optional[Refusal] = None) -> None:
        """The last response is out: refuse if asked, say close_notify, and linger
        while the client may still be sending."""
        http = conn.http
        if refusal is not None:
            conn.sock.settimeout(self.config.socket_timeout)
            http._refuse(refusal)
        common.send_close_notify(conn.sock)
        if not http.unread_body:
            self._close(conn)
            return
        common.shutdown_write(conn.sock)
        conn.phase = LINGER
        conn.deadline = time.monotonic() + common.LINGER_TIMEOUT
        conn.started = time.monotonic()
        self._linger(conn)

    def _linger(self, conn: _Conn) -> None:
        now = time.monotonic()
        while conn.lingered < common.LINGER_BYTES:
            if now - conn.started > common.LINGER_TIME:
                break
            try:
                count = common.discard_some(conn.sock)
            except BlockingIOError:
                conn.deadline = min(now + common.LINGER_TIMEOUT,
                                    conn.started + common.LINGER_TIME)
                self._release(conn, _IN)
                return
            except OSError:
                break
            if count == 0:
                break
            conn.lingered += count
        self._close(conn)

    # ----------------------------------------------------------------- ending

    def _close(self, conn: _Conn, notify: bool = False) -> None:
        """End an owned connection."""
        if notify:
            common.send_close_notify(conn.sock)
        with conn.lock:
            conn.closed = True
        self.budget.finished(conn)
        if self.conns.get(conn.fd) is conn:
            del self.conns[conn.fd]
        with contextlib.suppress(OSError, ValueError):
            self.epoll.unregister(conn.fd)
        common.close_quietly(conn.sock)

    def _take_and_close(self, conn: _Conn) -> bool:
        """End a connection nobody owns (from the main thread or the budget)."""
        with conn.lock:
            if conn.busy or conn.closed:
                return False
            conn.busy = True
        self._close(conn)
        return True

    def expire(self) -> None:
        """Main thread: end connections whose deadline passed and nobody owns."""
        now = time.monotonic()
        for conn in list(self.conns.values()):
            if conn.deadline > now or conn.busy:
                continue
            with conn.lock:
                if conn.busy or conn.closed:
                    continue
                conn.busy = True
            self._timed_out(conn)

    def _timed_out(self, conn: _Conn) -> None:
        if conn.phase == PROXY:
            common.proxy_header_refused(conn.http.peer, "PROXY header not received in time")
            self._close(conn)
        elif conn.phase == HANDSHAKE:
            common.handshake_failed(conn.http.peer, reason="no TLS handshake within "
                                    f"{self.config.handshake_timeout:g}s")
            self._close(conn)
        elif conn.phase == HEAD and conn.http.buf.strip(b"\r\n"):
            conn.sock.settimeout(1.0)  # the 408 is small: never wait long for it
            self._end(conn, Refusal(408, f"request head not complete in "
                                         f"{self.config.header_timeout:g}s"))
        elif conn.phase == HEAD:
            log.debug("connection idle too long: client=%s", conn.http.peer)
            self._close(conn, notify=True)
        else:
            self._close(conn)

    # ---------------------------------------------------------------- stopping

    def stop_accepting(self) -> None:
        """Refuse new connections now, and end the connections that wait."""
        self.accepting = False
        with contextlib.suppress(OSError, ValueError):
            self.epoll.unregister(self.listener_fd)
        common.close_quietly(self.listener)
        for conn in list(self.conns.values()):
            conn.http.closing = True  # an answer in progress is the last one
            self._take_and_close(conn)

    def in_flight(self) -> int:
        return sum(1 for conn in self.conns.values() if not conn.http.idle)

    def connection_counts(self) -> tuple[int, int]:
        """(open connections, those with a request in progress), for metrics. From the
        main thread while pool threads add and remove connections: a copy first (one
        C-level step under the GIL), so the dict never changes under the count."""
        conns = list(self.conns.values())
        return len(conns), sum(1 for conn in conns if not conn.http.idle)

    def drain(self, timeout: float) -> bool:
        """Wait for in-flight requests to finish; False when `timeout` ran out."""
        deadline = time.monotonic() + timeout
        while self.conns:
            if time.monotonic() > deadline:
                return False
            for conn in list(self.conns.values()):
                self._take_and_close(conn)  # those whose last answer is out
            time.sleep(0.02)
        return True

    def close(self) -> None:
        self.stopped = True
        with self.turn:
            self.turn.notify_all()
        for thread in self.threads:
            thread.join(_POLL_SECONDS * 2)
        self.epoll.close()


class _Ended(Exception):
    """The connection was closed while advancing it."""


def _nothing() -> int:
    return 0


def run(listener: socket.socket, app: WSGIApp, config: ServerConfig,
        tls: TLSGetter, *, access_log: Optional[AccessLogger] = None,
        proxy_from: Optional[Callable[[str], bool]] = None,
        on_signal: Optional[dict[int, Task]] = None,
        every: Optional[list[tuple[float, Task]]] = None,
        at_start: Optional[list[Task]] = None,
        on_connections: Optional[Callable[[int, int], None]] = None) -> int:
    """Serve `app` on `listener` until SIGTERM/SIGINT, then stop gracefully; exit code.

    Same contract as the eventlet engine's `run`: `tls` is asked for the material at
    each new connection, `on_signal` tasks and `every` (seconds, task) pairs run in
    the main thread, `at_start` once after the signal handlers are installed, and
    `on_connections` gets (open, in progress) every `metrics.REFRESH_SECONDS`.
    """
    common.raise_file_limit(config.max_connections + 64)
    server = _Server(listener, app, config, tls, access_log, proxy_from)
    every = common.periodic_tasks(every, on_connections, server.connection_counts)
    stop = threading.Event()
    why: list[str] = []
    pending: list[Task] = []

    def on_stop(signum: int, _frame: Any) -> None:
        if not why:
            why.append(signal.Signals(signum).name)
        stop.set()

    def on_task(signum: int, _frame: Any) -> None:
        pending.append((on_signal or {})[signum])
        stop.set()  # wake the main loop; it runs the task, not the handler

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_stop)
    for signum in on_signal or {}:
        signal.signal(signum, on_task)
    server.start()
    for task in at_start or []:
        common.run_task(task)
    timers = [[seconds, time.monotonic() + seconds, task]
              for seconds, task in every]
    while not why:
        stop.wait(0.1 if len(server.conns) < 2000 else 0.5)
        stop.clear()
        while pending:
            common.run_task(pending.pop(0))
        server.expire()
        server.rearm_listener()
        now = time.monotonic()
        for timer in timers:
            if now >= timer[1]:
                timer[1] = now + timer[0]
                common.run_task(timer[2])
    log.info("%s received: no new connections; waiting up to %gs for %d in-flight "
             "request(s)", why[0], config.shutdown_timeout, server.in_flight())
    server.stop_accepting()
    if not server.drain(config.shutdown_timeout):
        log.warning("shutdown_timeout (%gs) reached: cutting %d in-flight request(s)",
                    config.shutdown_timeout, server.in_flight())
    server.close()
    log.info("stopped")
    return 0
