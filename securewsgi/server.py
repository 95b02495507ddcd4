"""`serve(config)`: the one place that wires config -> TLS -> listener -> app -> engine.

Each stage validates its own input and raises `ConfigError` (exit 2) or `StartupError`
(exit 1) before the first connection is accepted, so a running server never meets a
configuration problem it could have reported at start-up.
"""
from __future__ import annotations

import ipaddress
import logging
import os
from typing import Any, Callable

from . import __version__
from .accesslog import AccessLog
from .appload import load_app
from .config import Config
from .listener import bind_listener
from .logs import setup_logging
from .middleware import IdentityMiddleware
from .tls import ServerTLS, build_server_tls

log = logging.getLogger("securewsgi.server")
WSGIApp = Callable[..., Any]


def build_pipeline(app: WSGIApp, config: Config) -> WSGIApp:
    """access log -> identity + authorization -> the user's app (outermost first)."""
    guarded = IdentityMiddleware.from_config(app, config.identity, config.authorization,
                                             source=config.source)
    return AccessLog(guarded, log_x_forwarded_for=config.server.log_x_forwarded_for)


def prepare(config: Config) -> tuple:
    """Everything `--check` validates and `serve` needs, without binding a port."""
    if config.server.workers > 1:
        raise config.error("server.workers", "more than one worker is not built yet; use 1")
    if config.tls.reload_interval > 0:
        raise config.error("tls.reload_interval", "certificate reloading is not built yet; "
                           "use 0 and restart to rotate certificates")
    tls = build_server_tls(config.tls, config.source)
    app = build_pipeline(load_app(config.app, config.source), config)
    return tls, app


def serve(config: Config) -> int:
    """Serve until SIGTERM/SIGINT; return the process exit code."""
    setup_logging(config.logging)
    from . import eventlet_engine as engine  # imported late: only serving needs eventlet

    engine.prepare_process(config.server.monkey_patch)  # before the app is imported
    tls, app = prepare(config)
    listener = bind_listener(config.server.host, config.server.port, config.server.backlog)
    for line in summary_lines(config, tls, listener.getsockname()[1]):
        log.info("%s", line)
    for warning in tls.warnings + tuple(plain_http_warnings(config)):
        log.warning("%s", warning)
    return engine.run(listener, app, config.server, lambda: tls.context)


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
    lines.append(f"app: {config.app.description}; identity: remote_user="
                 f"{config.identity.remote_user}, {len(config.identity.trusted_proxies)} "
                 f"trusted proxies; authorization: {len(rules)} rule(s), default "
                 f"{config.authorization.default}")
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
