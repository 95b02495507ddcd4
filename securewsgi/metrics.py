"""Prometheus metrics (`metrics.port`): what the server counts, and `/metrics`.

Off unless `metrics.port` is set; then every process of the service counts in the
library's multiprocess mode, so one scrape sees the totals of all workers:

* `start` (in the main process, before any worker is forked and before any metric
  exists) makes a private directory, points PROMETHEUS_MULTIPROC_DIR at it, binds the
  metrics port and serves `/metrics` from a thread. With workers the supervisor serves
  it; a single worker serves it itself. `Exporter.close` removes the directory.
* each worker creates a `WorkerMetrics` after the fork (each process writes its own
  files); the engines and the middleware report to it through `recorder`, a no-op
  while metrics are off (the identity middleware also runs under other servers).
* `ServiceMetrics` counts TLS reloads once per service: in the supervisor when there
  are workers (it reloads the same files at the same moment as they do), else in the
  one worker.

`prometheus_client` is imported only once the directory is set: the library picks its
per-process storage when it is first imported.
"""
from __future__ import annotations

import _socket
import contextlib
import datetime
import errno
import glob
import importlib
import logging
import os
import re
import shutil
import signal
import ssl
import sys
import tempfile
from types import ModuleType
from typing import TYPE_CHECKING, Any, Optional

from . import processes
from .tls.validity import utcnow

if TYPE_CHECKING:
    from .config import MetricsConfig
    from .http11 import AccessLogger
    from .tls.context import ServerTLS

log = logging.getLogger("securewsgi.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# How often a worker publishes its connection counts and certificate days.
REFRESH_SECONDS = 1.0
# API requests: a few ms typically, up to tens of seconds for slow back ends.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0, 30.0)
# Any other method is counted as "other": a client chooses the method, and each label
# value is a series Prometheus keeps.
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
                     "CONNECT", "TRACE"))
_CODE_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
# Distinct refusal reasons one process counts; any further one is counted as "other".
MAX_REASONS = 64
_PARENTHESES = re.compile(r"\s*\([^()]*\)")
_DAY_SECONDS = 86400.0

# /metrics requests: small heads, answered one at a time (a scraper asks every few
# seconds); a client that stalls is cut off after CLIENT_TIMEOUT seconds.
MAX_HEAD_BYTES = 8192
CLIENT_TIMEOUT = 5.0
_ACCEPT_POLL_SECONDS = 0.5
_ACCEPT_HEADER = re.compile(rb"\r\naccept:[ \t]*([^\r\n]*)", re.I)


# ------------------------------------------------------------------ the recorder


class _Off:
    """What the engines and the middleware report to while metrics are off."""

    def handshake_completed(self) -> None:
        pass

    def handshake_refused(self, reason: str) -> None:
        pass

    def denied(self, rule: str) -> None:
        pass


# The worker's `WorkerMetrics` once installed; read at each call, never imported by name.
recorder: Any = _Off()


def install(metrics: Optional[WorkerMetrics]) -> None:
    """Make `metrics` receive the engines' and the middleware's events (None: off)."""
    global recorder
    recorder = metrics if metrics is not None else _Off()


class WorkerMetrics:
    """One worker's metrics, created in the worker after the fork."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self._requests = Counter(
            "securewsgi_requests", "HTTP requests answered, by status class and method "
            "(methods other than the standard ones are counted as 'other').",
            ["code", "method"], registry=None)
        self._duration = Histogram(
            "securewsgi_request_duration_seconds", "Time from a request's complete head "
            "to the end of its response.", buckets=DURATION_BUCKETS, registry=None)
        connections = Gauge(
            "securewsgi_connections", "Open client connections: active ones have a request "
            "in progress, idle ones wait for a request (or finish their TLS handshake).",
            ["state"], multiprocess_mode="livesum", registry=None)
        self._active = connections.labels(state="active")
        self._idle = connections.labels(state="idle")
        self._handshakes = Counter(
            "securewsgi_tls_handshakes", "TLS handshakes completed.", registry=None)
        self._refused = Counter(
            "securewsgi_tls_handshakes_refused", "TLS handshakes refused, by the reason "
            "the log line gives.", ["reason"], registry=None)
        self._denied = Counter(
            "securewsgi_authorization_denied", "Requests refused (403) by authorization, "
            "by the deciding rule ('(default)': no rule matched).", ["rule"],
            registry=None)
        self._gauge = Gauge
        self._cert_days: Any = None
        self._ca_days: Any = None
        self._tls: Optional[ServerTLS] = None
        self._ca_not_after: Optional[datetime.datetime] = None
        self._reasons: set[str] = set()
        # (status, method) -> the counter for it: skips `labels()` on every request.
        self._children: dict[tuple[int, str], Any] = {}

    # ---------------------------------------------------------------- per request

    def request(self, environ: dict, status: int, size: int, seconds: float) -> None:
        """The access-log callback's signature: one response is complete."""
        method = environ.get("REQUEST_METHOD", "")
        if method not in METHODS:
            method = "other"
        child = self._children.get((status, method))
        if child is None:
            child = self._requests.labels(
                code=_CODE_CLASSES.get(status // 100, "other"), method=method)
            self._children[(status, method)] = child
        child.inc()
        self._duration.observe(seconds)

    # ------------------------------------------------------------------ events

    def handshake_completed(self) -> None:
        self._handshakes.inc()

    def handshake_refused(self, reason: str) -> None:
        """`reason` as the log line gives it; counted under `reason_label(reason)`."""
        label = reason_label(reason)
        if label not in self._reasons:
            if len(self._reasons) >= MAX_REASONS:
                label = "other"
            self._reasons.add(label)
        self._refused.labels(reason=label).inc()

    def denied(self, rule: str) -> None:
        self._denied.labels(rule=rule).inc()

    # --------------------------------------------------------------- periodically

    def connections(self, open_count: int, active: int) -> None:
        """The engine's connection counts (called from its loop every REFRESH_SECONDS)."""
        self._active.set(active)
        self._idle.set(max(0, open_count - active))

    def publish_tls(self, tls: ServerTLS) -> None:
        """Days until the server certificate and the soonest client CA expire, for the
        material new connections get now (so a reload shows within REFRESH_SECONDS)."""
        if tls.certificate is None:
            return
        if tls is not self._tls:
            self._tls = tls
            self._ca_not_after = soonest_ca_expiry(tls.context)
        now = utcnow()
        if self._cert_days is None:
            self._cert_days = self._gauge(
                "securewsgi_tls_certificate_days_left", "Days until the server "
                "certificate (tls.certfile) expires; negative once expired.",
                multiprocess_mode="livemin", registry=None)
        self._cert_days.set(_days(tls.certificate.not_after, now))
        if self._ca_not_after is None:
            return
        if self._ca_days is None:
            self._ca_days = self._gauge(
                "securewsgi_tls_ca_days_left", "Days until the first of the client CAs "
                "(tls.ca_certs) expires.", multiprocess_mode="livemin", registry=None)
        self._ca_days.set(_days(self._ca_not_after, now))


def reason_label(reason: str) -> str:
    """A refused handshake's reason as the log line says it, without what varies from
    client to client. The log puts dates, names and files in parentheses or after a
    colon ("client certificate expired (on 2026-12-01 19:00 UTC)", "the client
    rejected our certificate: it asked for NAME, ..."), and every label value is a
    series Prometheus keeps (a client chooses its SNI name), so those parts go:
    "client certificate expired", "the client rejected our certificate"."""
    short = reason
    for _ in range(4):  # nested parentheses, innermost first
        shorter = _PARENTHESES.sub("", short)
        if shorter == short:
            break
        short = shorter
    short = short.split(": ", 1)[0].strip()
    return short[:100] or "unknown"


def _days(moment: datetime.datetime, now: datetime.datetime) -> float:
    return (moment - now).total_seconds() / _DAY_SECONDS


def soonest_ca_expiry(context: Optional[ssl.SSLContext]) -> Optional[datetime.datetime]:
    """When the first CA that verifies client certificates expires: read from the
    context itself, which holds exactly the CAs that were loaded."""
    if context is None:
        return None
    ends = [ssl.cert_time_to_seconds(ca["notAfter"]) for ca in context.get_ca_certs()
            if "notAfter" in ca]
    if not ends:
        return None
    return datetime.datetime.fromtimestamp(min(ends), datetime.timezone.utc)


def observe_requests(writer: Optional[AccessLogger], metrics: WorkerMetrics
                     ) -> AccessLogger:
    """The callback the engines call once per response: metrics, then the access line
    (when the access log is on)."""
    if writer is None:
        return metrics.request
    count = metrics.request

    def both(environ: dict, status: int, size: int, seconds: float) -> None:
        count(environ, status, size, seconds)
        writer(environ, status, size, seconds)

    return both


class ServiceMetrics:
    """What happens once for the whole service: TLS material reloads."""

    def __init__(self) -> None:
        from prometheus_client import Counter

        reloads = Counter("securewsgi_tls_reloads", "TLS material reloads (SIGHUP or "
                          "changed files), by result.", ["result"], registry=None)
        self._ok = reloads.labels(result="ok")
        self._failed = reloads.labels(result="failed")

    def reloaded(self, ok: bool) -> None:
        (self._ok if ok else self._failed).inc()


# -------------------------------------------------------------------- /metrics


def start(config: MetricsConfig) -> Optional[Exporter]:
    """The running `/metrics` endpoint, or None when `metrics.port` is not set.

    Called once in the main process, before any metric exists and before workers are
    forked (they inherit the directory through the environment)."""
    if config.port is None:
        return None
    directory = tempfile.mkdtemp(prefix="securewsgi-metrics-")
    try:
        use_directory(directory)
        exporter = Exporter(config.host, config.port, directory)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    exporter.start()
    return exporter


def use_directory(directory: str) -> None:
    """Make every metric created from now on in this process and its children live in
    files under `directory`. A library already imported (an app that imported
    prometheus_client first) is switched over too."""
    os.environ[MULTIPROC_ENV] = directory
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()


def forget_dead_processes(directory: str) -> None:
    """Drop the gauges of processes that are gone (a worker that died or was replaced):
    a gauge says how things are now, and a dead worker holds no connections. Its
    counters stay, so totals never go down."""
    from prometheus_client import multiprocess

    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        pid_text = os.path.basename(path).rsplit("_", 1)[-1][:-3]
        if pid_text.isdigit() and not processes.exists(int(pid_text)):
            multiprocess.mark_process_dead(int(pid_text), directory)


class _Collector:
    """Every process's files, merged, once the gauges of dead processes are dropped."""

    def __init__(self, directory: str) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.directory = directory
        self.merged = MultiProcessCollector(None, directory)

    def collect(self) -> Any:
        forget_dead_processes(self.directory)
        # A worker creates its file empty and then sizes it: a scrape in between
        # would fail on the empty file (mmap refuses it). Such a file holds no
        # values yet, so it is left out of this scrape.
        for attempt in range(3):
            files = [path for path in glob.glob(os.path.join(self.directory, "*.db"))
                     if _has_header(path)]
            try:
                return self.merged.merge(files, accumulate=True)
            except FileNotFoundError:  # a dead worker's gauges removed meanwhile
                if attempt == 2:
                    raise
        return []


def _has_header(path: str) -> bool:
    try:
        return os.path.getsize(path) >= 8  # prometheus_client's used-bytes header
    except OSError:  # removed meanwhile (a dead process's gauges)
        return False


class Exporter:
    """`GET /metrics` over plain HTTP, answered from a thread of its own.

    Sockets are the C-level `_socket` ones and the thread a real OS thread, also when
    eventlet has monkey-patched the process: wsgiref and socketserver (what the
    library's own server uses) hold on to the `socket` and `selectors` they found
    when first imported, which in a worker is before eventlet patches, so in a green
    thread they would block the whole hub. A real thread with real sockets answers
    whatever the engine does, and costs the engine nothing between scrapes.
    """

    def __init__(self, host: str, port: int, directory: str) -> None:
        from prometheus_client import CollectorRegistry

        self.host = host
        self.directory = directory
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(directory))
        self._family, self._sock = _bind(host, port)
        self.port: int = self._sock.getsockname()[1]
        self._closing = False
        self._stopped: Optional[Any] = None  # a lock held while the thread runs
        self._failed = False
        self._pid = os.getpid()
        os.register_at_fork(after_in_child=self._forget_in_child)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> None:
        """Answer from a real OS thread. A bare `_thread` one: eventlet may patch
        `threading` after this (a single worker patches once it serves), and a
        `threading.Thread` started before would then fail its own bookkeeping at
        exit. Like a daemon thread, it does not keep the process alive."""
        thread = _original("_thread")
        self._stopped = thread.allocate_lock()
        self._stopped.acquire()
        # Signals belong to the main thread: the supervisor takes them with sigwait,
        # and a signal delivered to this thread would be lost to it.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            thread.start_new_thread(self._run, ())
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def close(self) -> None:
        """Stop answering and remove the metric files (the main process, at exit)."""
        self._closing = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(_socket.SHUT_RDWR)  # wakes a blocked accept()
        with contextlib.suppress(OSError):
            self._sock.close()
        if self._stopped is not None and self._stopped.acquire(
                timeout=2 * _ACCEPT_POLL_SECONDS):
            self._stopped.release()
        if os.getpid() == self._pid:
            shutil.rmtree(self.directory, ignore_errors=True)
            if os.environ.get(MULTIPROC_ENV) == self.directory:
                del os.environ[MULTIPROC_ENV]

    def _forget_in_child(self) -> None:
        """A forked worker inherits the listening socket but not the thread: close its
        copy, so the port is free once the supervisor is gone."""
        self._closing = True
        with contextlib.suppress(OSError):
            self._sock.close()

    # ------------------------------------------------------------- the thread

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            if self._stopped is not None:
                self._stopped.release()

    def _serve(self) -> None:
        sleep = _original("time").sleep
        self._sock.settimeout(_ACCEPT_POLL_SECONDS)
        while not self._closing:
            try:
                fd, _addr = self._sock._accept()
            except _socket.timeout:
                continue
            except OSError:
                if not self._closing:
                    sleep(0.05)  # EMFILE and friends: try again shortly
                continue
            conn = _socket.socket(self._family, _socket.SOCK_STREAM, 0, fd)
            try:
                conn.settimeout(CLIENT_TIMEOUT)
                self._answer(conn)
            except OSError:
                pass  # the client went away or stalled
            finally:
                conn.close()

    def _answer(self, conn: _socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            if len(head) > MAX_HEAD_BYTES:
                return _send(conn, 431, b"request head too large\n")
            chunk = conn.recv(4096)
            if not chunk:
                return None
            head += chunk
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _send(conn, 400, b"not an HTTP request\n")
        method, target = parts[0], parts[1]
        if target.split(b"?", 1)[0] != b"/metrics":
            return _send(conn, 404, b"not found: metrics are at /metrics\n")
        if method not in (b"GET", b"HEAD"):
            return _send(conn, 405, b"use GET\n", extra=b"Allow: GET, HEAD\r\n")
        accept = _ACCEPT_HEADER.search(head)
        content_type, body = self._exposition(
            accept.group(1).decode("latin-1") if accept else None)
        if content_type is None:
            return _send(conn, 500, body)
        return _send(conn, 200, body, content_type=content_type,
                     head_only=method == b"HEAD")

    def _exposition(self, accept: Optional[str]) -> tuple[Optional[str], bytes]:
        """(content type, body) in the format the scraper asked for (Prometheus text,
        or OpenMetrics when its Accept header prefers it); (None, reason) on failure."""
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        try:
            return content_type, encoder(self.registry)
        except Exception as exc:  # a damaged file must not end the thread
            if not self._failed:
                self._failed = True
                log.error("metrics: cannot collect the metric files in %s: %s",
                          self.directory, exc)
            return None, f"cannot collect metrics: {exc}\n".encode()


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found",
            405: b"Method Not Allowed", 431: b"Request Header Fields Too Large",
            500: b"Internal Server Error"}


def _send(conn: _socket.socket, status: int, body: bytes,
          content_type: str = "text/plain; charset=utf-8", extra: bytes = b"",
          head_only: bool = False) -> None:
    head = (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s"
            b"Connection: close\r\n\r\n" % (status, _REASONS[status],
                                           content_type.encode("latin-1"), len(body), extra))
    conn.sendall(head if head_only else head + body)


def _bind(host: str, port: int) -> tuple[int, _socket.socket]:
    """A listening C-level socket on host:port; StartupError naming metrics.port."""
    from .errors import StartupError

    bare = host.strip("[]")
    where = f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"
    try:
        infos = _socket.getaddrinfo(bare, port, 0, _socket.SOCK_STREAM, 0,
                                    _socket.AI_PASSIVE | _socket.AI_NUMERICSERV)
    except OSError as exc:
        raise StartupError(f"metrics.host: cannot resolve {host!r}: "
                           f"{exc.strerror or exc}") from None
    family, _type, _proto, _name, address = infos[0]
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"metrics.port: {where} is already in use by another "
                               "process") from None
        raise StartupError(f"metrics.port: cannot listen on {where}: "
                           f"{exc.strerror or exc}") from None
    return family, sock


def _original(name: str) -> ModuleType:
    """The standard library module `name` as it was before eventlet patched it (the
    module itself when nothing patched it)."""
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is not None and patcher.is_monkey_patched(name.lstrip("_")):
        return patcher.original(name)
    return importlib.import_module(name)


__all__ = ["Exporter", "ServiceMetrics", "WorkerMetrics", "install", "observe_requests",
           "recorder", "start"]
