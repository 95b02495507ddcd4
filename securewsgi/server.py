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
from typing import Any, Callable, Optional

from . import __version__, engines
from .accesslog import make_writer
from .appload import load_app
from .config import Config, ServerConfig
from .errors import ConfigError, StartupError
from .forwarded import TrustedProxies
from .listener import bind_listener
from .logs import setup_logging
from .middleware import IdentityMiddleware
from .reload import TLSReloader
from .tls import ServerTLS, build_server_tls

log = logging.getLogger("securewsgi.server")
WSGIApp = Callable[..., Any]


def build_pipeline(app: WSGIApp, config: Config) -> WSGIApp:
    """identity + authorization in front of the user's app."""
    return IdentityMiddleware.from_config(app, config.identity, config.authorization,
                                          source=config.source)


def prepare(config: Config) -> tuple:
    """Everything `--check` validates and `serve` needs, without binding a port."""
    tls = build_server_tls(config.tls, config.source)
    app = build_pipeline(load_app(config.app, config.source), config)
    return tls, app


def serve(config: Config) -> int:
    """Serve until SIGTERM/SIGINT; return the process exit code.

    One worker runs in this process. More are forked by the supervisor after the TLS
    material was checked and the socket bound here, so a mistake in either is reported
    once, before any worker starts; each worker then imports the app itself.
    """
    setup_logging(config.logging)
    if config.server.workers == 1:
        return _run_worker(config, None, None, forked=False)
    tls = build_server_tls(config.tls, config.source)
    listener = _bind_and_announce(config, tls)
    # The supervisor keeps the last good TLS material too (reloading as the workers
    # do), and a worker it forks starts from that copy instead of the files: if the
    # files on disk are broken right then, a replacement worker still serves.
    reloader = TLSReloader(config.tls, config.source, tls, announce=False)
    periodic = []
    if config.tls.reload_interval > 0 and config.tls.enabled:
        periodic.append((config.tls.reload_interval, reloader.poll))
    from .supervisor import Supervisor

    supervisor = Supervisor(config.server.workers,
                            lambda: _worker_main(config, listener, reloader),
                            config.server.shutdown_timeout, on_stop=listener.close,
                            on_reload=lambda: reloader.reload("SIGHUP"), periodic=periodic)
    return supervisor.run()


def _worker_main(config: Config, listener: socket.socket, reloader: TLSReloader) -> int:
    """A forked worker: report configuration problems as the one-line errors they are."""
    try:
        return _run_worker(config, listener, reloader.for_worker(), forked=True)
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
                reloader: Optional[TLSReloader], forked: bool) -> int:
    early_signals = _EarlySignals()
    engine = engines.load(config.server.engine)  # late: only serving needs an engine
    engine.prepare_process(config.server, forked=forked)  # before the app is imported
    if reloader is None:
        tls, app = prepare(config)
        reloader = TLSReloader(config.tls, config.source, tls)
    else:
        app = build_pipeline(load_app(config.app, config.source), config)
    if listener is None:
        listener = _bind_and_announce(config, reloader.current)
    access_log = make_writer(config.logging.access_log, config.logging.format,
                             config.server.log_x_forwarded_for)
    every = []
    if config.tls.reload_interval > 0 and config.tls.enabled:
        every.append((config.tls.reload_interval, reloader.poll))

    def on_sighup() -> None:
        # Each part of a SIGHUP on its own: a log file that cannot be reopened must
        # not keep new certificates from being loaded.
        if access_log is not None:
            try:
                access_log.reopen()  # after logrotate moved the file away
            except OSError as exc:
                log.error("SIGHUP: cannot reopen the access log %s (%s); still writing "
                          "to the previous file", access_log.target, exc.strerror or exc)
        reloader.reload("SIGHUP")

    proxy_from = None
    if config.server.proxy_protocol:
        proxy_from = TrustedProxies(config.identity.trusted_proxies).__contains__
    return engine.run(listener, app, config.server, reloader.material, access_log=access_log,
                      proxy_from=proxy_from,
                      on_signal={signal.SIGHUP: on_sighup}, every=every,
                      at_start=[early_signals.replay])


def _bind_and_announce(config: Config, tls: ServerTLS) -> socket.socket:
    listener = bind_listener(config.server.host, config.server.port, config.server.backlog)
    for line in summary_lines(config, tls, listener.getsockname()[1]):
        log.info("%s", line)
    for warning in tls.warnings + tuple(plain_http_warnings(config)):
        log.warning("%s", warning)
    return listener


def url(config: Config, port: int) -> str:
    scheme = "https" if config.tls.enabled else "http"
    host = config.server.host
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def summary_lines(config: Config, tls: ServerTLS, port: int) -> list[str]:
    """What is about to be served, for the start-up log and `--check`."""
    s = config.server
    lines = [
        f"securewsgi {__version__} listening on {url(config, port)} (pid {os.getpid()}, "
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
    return lines


def _engine_text(server: ServerConfig) -> str:
    if server.engine == "threads":
        return f"threads ({server.threads} threads)"
    return f"eventlet ({'monkey-patched' if server.monkey_patch else 'not monkey-patched'})"


def plain_http_warnings(config: Config) -> list[str]:
    if config.tls.enabled or _is_loopback(config.server.host):
        return []
    return [f"tls.mode is none: serving plain HTTP on {config.server.host}, which is not "
            "loopback; credentials and identities travel unencrypted"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
