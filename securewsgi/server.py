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

from . import __version__
from .accesslog import make_writer
from .appload import load_app
from .config import Config
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
        return _run_worker(config, None, forked=False)
    tls = build_server_tls(config.tls, config.source)
    listener = _bind_and_announce(config, tls)
    from .supervisor import Supervisor

    supervisor = Supervisor(config.server.workers,
                            lambda: _worker_main(config, listener),
                            config.server.shutdown_timeout, on_stop=listener.close)
    return supervisor.run()


def _worker_main(config: Config, listener: socket.socket) -> int:
    """A forked worker: report configuration problems as the one-line errors they are."""
    try:
        return _run_worker(config, listener, forked=True)
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


def _run_worker(config: Config, listener: Optional[socket.socket], forked: bool) -> int:
    early_signals = _EarlySignals()
    from . import eventlet_engine as engine  # imported late: only serving needs eventlet

    engine.prepare_process(config.server.monkey_patch, forked=forked)  # before the app
    tls, app = prepare(config)
    if listener is None:
        listener = _bind_and_announce(config, tls)
    reloader = TLSReloader(config.tls, config.source, tls)
    access_log = make_writer(config.logging.access_log, config.logging.format,
                             config.server.log_x_forwarded_for)
    every = []
    if config.tls.reload_interval > 0 and config.tls.enabled:
        every.append((config.tls.reload_interval, reloader.poll))

    def on_sighup() -> None:
        if access_log is not None:
            access_log.reopen()  # after logrotate moved the file away
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
        f"{s.workers} worker(s), max {s.max_connections} connections each)",
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
