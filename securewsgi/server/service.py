"""`serve(config)`: the one place that wires config -> TLS -> listener -> app -> engine.

Each stage validates its own input and raises `ConfigError` (exit 2) or `StartupError`
(exit 1) before the first connection is accepted, so a running server never meets a
configuration problem it could have reported at start-up.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .. import __version__, engines, metrics, processes
from ..config import Config, ServerConfig
from ..errors import ConfigError, StartupError
from ..identity.forwarded import TrustedProxies
from ..identity.middleware import IdentityMiddleware
from ..logs import setup_logging
from ..tls.context import ServerTLS, build_server_tls
from ..tls.reload import TLSReloader
from ..wsgitypes import WSGIApp
from . import systemd
from .accesslog import make_writer
from .appload import load_app
from .listener import bind_listener
from .supervisor import Heart, Supervisor

log = logging.getLogger("securewsgi.server")


def build_pipeline(app: WSGIApp, config: Config) -> WSGIApp:
    """identity + authorization in front of the user's app."""
    return IdentityMiddleware.from_config(app, config.identity, config.authorization,
                                          source=config.source)


def prepare(config: Config) -> tuple:
    """Everything `--check` validates and `serve` needs, without binding a port."""
    tls = build_server_tls(config.tls, config.source)
    app = build_pipeline(load_app(config.app, config.source), config)
    return tls, app


@dataclass
class _Launch:
    """What this process was started with besides the config: systemd's notify socket
    and its inherited listening socket (socket activation), and a pid file to write
    once listening. A forked worker gets a silent one: only the process systemd
    started may report to it."""

    notifier: systemd.Notifier
    activated: Optional[socket.socket] = None
    pid_file: Optional[PidFile] = None
    exporter: Optional[metrics.Exporter] = None  # /metrics, served by this process


def serve(config: Config, pid_file: Optional[Path] = None) -> int:
    """Serve until SIGTERM/SIGINT; return the process exit code.

    One worker runs in this process. More are forked by the supervisor after the TLS
    material was checked and the socket bound here, so a mistake in either is reported
    once, before any worker starts; each worker then imports the app itself.
    `pid_file` is refused at once when it names a running process, written once the
    socket is bound, and removed at exit.
    """
    setup_logging(config.logging)
    pid = PidFile(pid_file) if pid_file is not None else None
    if pid is not None:
        pid.refuse_live()
    status = systemd.describe(config.server.workers, config.tls.mode, config.server.engine)
    exporter = metrics.start(config.metrics)  # before any metric exists or worker forks
    launch = _Launch(systemd.Notifier.from_environment(status), systemd.listen_socket(), pid,
                     exporter)
    try:
        if config.server.workers == 1:
            return _run_worker(config, None, None, forked=False, launch=launch)
        return _supervise(config, launch)
    finally:
        if exporter is not None:
            exporter.close()
        if pid is not None:
            pid.remove()


def _supervise(config: Config, launch: _Launch) -> int:
    """`workers: N > 1`: bind here, fork the workers, and speak to systemd for them."""
    tls = build_server_tls(config.tls, config.source)
    listener = _bind_and_announce(config, tls, launch)
    notifier = launch.notifier
    # The supervisor keeps the last good TLS material too (reloading as the workers
    # do), and a worker it forks starts from that copy instead of the files: if the
    # files on disk are broken right then, a replacement worker still serves.
    reloader = TLSReloader(config.tls, config.source, tls, announce=False)
    if config.metrics.enabled:  # the service's reloads: the workers' copies do not count
        reloader.on_result = metrics.ServiceMetrics().reloaded
    periodic = []
    if config.tls.reload_interval > 0 and config.tls.enabled:
        periodic.append((config.tls.reload_interval, reloader.poll))
    if notifier.watchdog_interval is not None:  # systemd watches this loop; it watches ours
        periodic.append((notifier.watchdog_interval, notifier.watchdog))

    def on_stop() -> None:
        notifier.stopping()
        listener.close()

    def on_reload() -> None:
        notifier.reloading()
        notifier.reloaded(reloader.reload("SIGHUP"))

    supervisor = Supervisor(config.server.workers,
                            lambda heart: _worker_main(config, listener, reloader, heart),
                            config.server.shutdown_timeout, on_stop=on_stop,
                            on_reload=on_reload, periodic=periodic,
                            worker_timeout=config.server.worker_timeout,
                            on_ready=notifier.ready, on_event=notifier.event)
    return supervisor.run()


def _worker_main(config: Config, listener: socket.socket, reloader: TLSReloader,
                 heart: Heart) -> int:
    """A forked worker: report configuration problems as the one-line errors they are."""
    try:
        return _run_worker(config, listener, reloader.for_worker(), forked=True,
                           launch=_Launch(systemd.Notifier(None)), heart=heart)
    except (ConfigError, StartupError) as exc:
        log.error("%s", exc)
        return exc.exit_code


class _EarlySignals:
    """A signal that arrives while the worker still starts must neither kill it (the
    default action) nor be lost: remember it and send it again once the engine has
    installed its own handlers (SIGTERM then stops gracefully, SIGHUP reloads)."""

    SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.seen: list[int] = []
        for signum in self.SIGNALS:
            signal.signal(signum, self._remember)
        # A forked worker starts with these blocked (see supervisor.Supervisor._spawn).
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.SIGNALS)

    def _remember(self, signum: int, _frame: Any) -> None:
        if signum not in self.seen:
            self.seen.append(signum)

    def replay(self) -> None:
        for signum in self.seen:
            os.kill(os.getpid(), signum)


def _run_worker(config: Config, listener: Optional[socket.socket],
                reloader: Optional[TLSReloader], forked: bool, launch: _Launch,
                heart: Optional[Heart] = None) -> int:
    """Serve in this process. `heart`, in a forked worker, tells the supervisor the
    worker serves and then, from the engine's loop, that the loop still turns."""
    early_signals = _EarlySignals()
    engine = engines.load(config.server.engine)  # late: only serving needs an engine
    engine.prepare_process(config.server, forked=forked)  # before the app is imported
    # Created here, after the fork: each worker writes metric files of its own.
    worker_metrics = metrics.WorkerMetrics() if config.metrics.enabled else None
    metrics.install(worker_metrics)
    if reloader is None:
        tls, app = prepare(config)
        reloader = TLSReloader(config.tls, config.source, tls)
        if config.metrics.enabled:
            reloader.on_result = metrics.ServiceMetrics().reloaded
    else:
        app = build_pipeline(load_app(config.app, config.source), config)
    if listener is None:
        listener = _bind_and_announce(config, reloader.current, launch)
    access_log = make_writer(config.logging.access_log, config.logging.format,
                             config.server.log_x_forwarded_for)
    every = []
    on_response = access_log
    if worker_metrics is not None:
        on_response = metrics.observe_requests(access_log, worker_metrics)
        worker_metrics.publish_tls(reloader.current)  # in the first scrape already
        every.append((metrics.REFRESH_SECONDS,
                      lambda: worker_metrics.publish_tls(reloader.current)))
    if config.tls.reload_interval > 0 and config.tls.enabled:
        every.append((config.tls.reload_interval, reloader.poll))
    if config.tls.enabled:
        every.append((reloader.EXPIRY_CHECK_SECONDS, reloader.check_expiry))
    notifier = launch.notifier
    if notifier.watchdog_interval is not None:
        every.append((notifier.watchdog_interval, notifier.watchdog))
    at_start: list[Callable[[], None]] = [notifier.ready]
    if notifier.enabled:
        at_start.append(lambda: _before_stop_signals(notifier.stopping))
    if heart is not None:
        # Stop signals first: once the supervisor has seen a beat, a SIGTERM to this
        # worker alone marks it as draining, not stuck.
        at_start += [lambda: _before_stop_signals(heart.stopping), heart.beat]
        if config.server.worker_timeout > 0:
            every.append((heartbeat_interval(config.server), heart.beat))
    at_start.append(early_signals.replay)  # last: a replayed SIGTERM finds it all set

    def on_sighup() -> None:
        # Each part of a SIGHUP on its own: a log file that cannot be reopened must
        # not keep new certificates from being loaded.
        if access_log is not None:
            try:
                access_log.reopen()  # after logrotate moved the file away
            except OSError as exc:
                log.error("SIGHUP: cannot reopen the access log %s (%s); still writing "
                          "to the previous file", access_log.target, exc.strerror or exc)
        notifier.reloading()
        notifier.reloaded(reloader.reload("SIGHUP"))

    proxy_from = None
    if config.server.proxy_protocol:
        proxy_from = TrustedProxies(config.identity.trusted_proxies).__contains__
    try:
        return engine.run(listener, app, config.server, reloader.material,
                          access_log=on_response, proxy_from=proxy_from,
                          on_signal={signal.SIGHUP: on_sighup}, every=every,
                          at_start=at_start,
                          on_connections=worker_metrics and worker_metrics.connections)
    finally:
        notifier.stopping()  # once: after a signal, the chained handler already said it


def heartbeat_interval(server: ServerConfig) -> float:
    """How often a worker's loop tells the supervisor it still turns: often enough that
    a healthy worker is never taken for a stuck one, at most once a second."""
    return min(1.0, server.worker_timeout / 4)


def _before_stop_signals(task: Callable[[], None]) -> None:
    """Run `task` (STOPPING=1) when SIGTERM/SIGINT arrive, then the engine's handler.

    The engines stop on these signals themselves; wrapping the handlers they installed
    (this runs at start, after them) tells systemd at once, without a hook in them.
    """
    for signum in (signal.SIGTERM, signal.SIGINT):
        engine_handler = signal.getsignal(signum)
        if not callable(engine_handler):
            continue

        def handler(signo: int, frame: Any, engine_handler: Callable = engine_handler) -> None:
            task()
            engine_handler(signo, frame)

        signal.signal(signum, handler)


def _bind_and_announce(config: Config, tls: ServerTLS, launch: _Launch) -> socket.socket:
    """The listening socket (systemd's, or bound here), then the pid file, then the
    start-up lines: a "listening on" line means the pid file is in place."""
    if launch.activated is not None:
        listener, origin = launch.activated, " (socket from systemd)"
    else:
        listener = bind_listener(config.server.host, config.server.port,
                                 config.server.backlog)
        origin = ""
    if launch.pid_file is not None:
        launch.pid_file.write()
    host, port = listener.getsockname()[:2]
    shown_host = host if launch.activated is not None else None
    metrics_port = launch.exporter.port if launch.exporter is not None else None
    for line in summary_lines(config, tls, port, host=shown_host, origin=origin,
                              metrics_port=metrics_port):
        log.info("%s", line)
    for warning in tls.warnings + tuple(plain_http_warnings(config, host=shown_host)):
        log.warning("%s", warning)
    return listener


def url(config: Config, port: int, host: Optional[str] = None) -> str:
    scheme = "https" if config.tls.enabled else "http"
    host = config.server.host if host is None else host
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def summary_lines(config: Config, tls: ServerTLS, port: int, host: Optional[str] = None,
                  origin: str = "", metrics_port: Optional[int] = None) -> list[str]:
    """What is about to be served, for the start-up log and `--check`. `host` is the
    address actually listened on when it differs from the config's (socket activation);
    `origin` says where the socket came from; `metrics_port` the bound metrics port."""
    s = config.server
    lines = [
        f"securewsgi {__version__} listening on {url(config, port, host)}{origin} "
        f"(pid {os.getpid()}, "
        f"{s.workers} worker(s), engine {_engine_text(s)}, max {s.max_connections} "
        f"connections each)",
        f"tls: mode={tls.mode} versions={tls.versions} handshake_timeout={s.handshake_timeout:g}s",
    ]
    if tls.certificate is not None:
        cert = tls.certificate
        lines.append(f"certificate: {cert.subject} SANs=[{', '.join(cert.sans)}] issuer="
                     f"{cert.issuer} expires {cert.not_after:%Y-%m-%d} "
                     f"({cert.days_left()} days)")
    for subject in tls.ca_subjects:
        lines.append(f"client CA: {subject}")
    if config.tls.crl_file is not None:
        lines.append(f"crl: {config.tls.crl_file} ({tls.crl_revoked} revoked)")
    rules = config.authorization.rules
    identity = config.identity
    proxies = f"{len(identity.trusted_proxies)} trusted proxy network(s)"
    if identity.trusted_proxy_identities:
        proxies += f" with {len(identity.trusted_proxy_identities)} proxy identity rule(s)"
    if s.proxy_protocol:
        proxies += ", PROXY protocol required from them"
    lines.append(f"app: {config.app.description}; identity: remote_user="
                 f"{identity.remote_user}, {proxies}; authorization: {len(rules)} rule(s), "
                 f"default {config.authorization.default}")
    if config.metrics.enabled:
        lines.append(metrics_line(config, metrics_port))
    return lines


def metrics_line(config: Config, port: Optional[int] = None) -> str:
    """`metrics: http://127.0.0.1:9100/metrics (...)`; `port` once bound (metrics.port
    0 picks a free one)."""
    m = config.metrics
    port = m.port if port is None else port
    host = f"[{m.host}]" if ":" in m.host else m.host
    where = "a free port, named at start" if port == 0 else f"http://{host}:{port}/metrics"
    served = ("by the supervisor, totals of all workers" if config.server.workers > 1
              else "by the worker")
    return f"metrics: {where} (plain HTTP, Prometheus text format, served {served})"


def _engine_text(server: ServerConfig) -> str:
    if server.engine == "threads":
        return f"threads ({server.threads} threads)"
    return f"eventlet ({'monkey-patched' if server.monkey_patch else 'not monkey-patched'})"


def plain_http_warnings(config: Config, host: Optional[str] = None) -> list[str]:
    host = config.server.host if host is None else host
    warnings = []
    if not config.tls.enabled and not _is_loopback(host):
        warnings.append(f"tls.mode is none: serving plain HTTP on {host}, which is not "
                        "loopback; credentials and identities travel unencrypted")
    if config.metrics.enabled and not _is_loopback(config.metrics.host):
        warnings.append(f"metrics.host is {config.metrics.host}, which is not loopback: "
                        "/metrics is plain HTTP without authentication, readable by anyone "
                        "who can reach that port (restrict it with a firewall)")
    return warnings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class PidFile:
    """`--pid FILE`: this process's pid, for tools that still want one.

    Written once the socket is bound (its presence means "serving"), atomically (a
    reader never sees half a number), and removed at exit only while it still names
    this process. A file naming a running process refuses the start: two servers
    would otherwise fight over it. One naming a dead process is stale and replaced.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(os.path.abspath(path))
        self.written = False

    def refuse_live(self) -> None:
        """Raise StartupError when the file names another running process, or cannot
        be written; checked before binding, so a refused start touches nothing."""
        if not os.access(self.path.parent, os.W_OK):
            raise StartupError(f"pid file {self.path}: cannot write to {self.path.parent} "
                               "(missing or not writable)")
        pid = self._read()
        if pid is None or pid == os.getpid():
            return
        if processes.exists(pid):
            raise StartupError(f"pid file {self.path} names pid {pid}, which is running: "
                               "is this service already started? (if that process is "
                               "something else, remove the file)")
        log.info("pid file %s names pid %d, which is not running: replacing it",
                 self.path, pid)

    def write(self) -> None:
        self.refuse_live()  # again: another server may have started since
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            staging.write_text(f"{os.getpid()}\n")
            os.replace(staging, self.path)
        except OSError as exc:
            staging.unlink(missing_ok=True)
            raise StartupError(f"pid file {self.path}: cannot write it "
                               f"({exc.strerror or exc})") from None
        self.written = True

    def remove(self) -> None:
        try:
            if self.written and self._read() == os.getpid():
                self.path.unlink()
        except (OSError, StartupError) as exc:
            log.warning("cannot remove the pid file %s (%s)", self.path,
                        getattr(exc, "strerror", None) or exc)

    def _read(self) -> Optional[int]:
        """The pid in the file; None when there is no file or no number in it (a
        file left half-written by something else is as good as stale)."""
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StartupError(f"pid file {self.path}: cannot read it "
                               f"({exc.strerror or exc})") from None
        return int(text) if text.isdigit() and int(text) > 0 else None
