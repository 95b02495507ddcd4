"""The typed, immutable shape of a service file: `Config` and one dataclass per section.

`loader` fills these from a file (and validates every value on the way in); the later
stages (TLS, server, middleware) only read them.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import ConfigError

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8443
    backlog: int = 128
    workers: int = 1
    max_connections: int = 1024
    handshake_timeout: float = 10.0
    socket_timeout: float = 60.0
    keepalive: Union[bool, float] = True
    shutdown_timeout: float = 30.0
    header_timeout: float = 30.0
    max_header_count: int = 100
    max_header_bytes: int = 65536
    max_request_body: Optional[int] = None
    max_http_version: str = "HTTP/1.1"
    url_length_limit: int = 8192
    minimum_chunk_size: int = 4096
    capitalize_response_headers: bool = True
    log_x_forwarded_for: bool = True
    monkey_patch: bool = True
    proxy_protocol: bool = False
    engine: str = "eventlet"
    threads: int = 64
    max_handshakes: int = 256
    max_handshakes_per_ip: int = 64
    worker_timeout: float = 60.0  # a worker whose loop is stuck this long is replaced


@dataclass(frozen=True)
class TLSConfig:
    mode: str = "server"
    certfile: Optional[Path] = None
    keyfile: Optional[Path] = None
    key_password: Optional[str] = None
    ca_certs: Optional[Path] = None
    crl_file: Optional[Path] = None
    min_version: str = "TLSv1.2"
    max_version: Optional[str] = None
    ciphers: Optional[str] = None
    reload_interval: float = 0.0
    session_tickets: Optional[int] = None  # None = auto: 1 in server mode, else 0
    # Warn (at start, at each reload, then daily) when tls.certfile expires this soon.
    expiry_warning_days: int = 14

    @property
    def tickets(self) -> int:
        """TLS 1.3 tickets per full handshake: cheap without a client certificate
        (server mode), about a fifth of the handshake's CPU with one (OpenSSL 3 copies
        the session, client certificate included), so off by default there."""
        if self.session_tickets is not None:
            return self.session_tickets
        return 1 if self.mode == "server" else 0

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


@dataclass(frozen=True)
class AppConfig:
    factory: Optional[str] = None
    options: Mapping[str, Any] = field(default_factory=dict)
    paste: Optional[Path] = None
    name: str = "main"
    python_path: tuple[Path, ...] = ()

    @property
    def description(self) -> str:
        if self.paste is not None:
            return f"paste {self.paste} (name {self.name})"
        return f"factory {self.factory}"


@dataclass(frozen=True)
class AllowEntry:
    """One `allow` entry: every (field, pattern) pair must match (logical AND)."""

    conditions: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RuleConfig:
    name: str
    paths: tuple[str, ...]
    methods: tuple[str, ...] = ()
    allow: tuple[AllowEntry, ...] = ()


@dataclass(frozen=True)
class AuthorizationConfig:
    default: str = "allow"
    rules: tuple[RuleConfig, ...] = ()


@dataclass(frozen=True)
class IdentityConfig:
    remote_user: str = "none"
    trusted_proxies: tuple[Network, ...] = ()
    forwarded_cert_header: str = "x-forwarded-client-cert"
    # A forwarded certificate is trusted only from a proxy whose own (mutual TLS)
    # certificate matches one of these entries, when any are given.
    trusted_proxy_identities: tuple[AllowEntry, ...] = ()
    # Remove identity-looking request headers (X-SSL-Client-*, Remote-User, ...) unless
    # a trusted proxy sent them: an app written for a front end that sets them must not
    # believe a client that talks to us directly.
    strip_identity_headers: bool = True
    # "server" (the hosting server's verified certificate) is for IdentityMiddleware
    # under another server; a service file accepts only "none" (see _read_identity).
    client_cert_from: str = "none"


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"
    access_log: Union[str, Path, None] = "-"
    format: str = "text"
    # A logging.config file (dictConfig YAML/JSON or fileConfig INI) that replaces
    # securewsgi's own error-log handler, for sites that route logs their own way.
    config_file: Optional[Path] = None


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus `/metrics` over plain HTTP; off while `port` is None."""

    port: Optional[int] = None  # 0 = pick a free port (the start-up line says which)
    host: str = "127.0.0.1"

    @property
    def enabled(self) -> bool:
        return self.port is not None


@dataclass(frozen=True)
class Config:
    source: Path
    server: ServerConfig = ServerConfig()
    tls: TLSConfig = TLSConfig()
    app: AppConfig = AppConfig()
    identity: IdentityConfig = IdentityConfig()
    authorization: AuthorizationConfig = AuthorizationConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()

    def error(self, key: Optional[str], message: str) -> ConfigError:
        """A `ConfigError` about this file, for checks made after loading."""
        return ConfigError(self.source, key, message)
