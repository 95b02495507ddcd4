"""Read a service file (YAML or INI) into one validated, typed, immutable `Config`.

Everything a user can get wrong in the file is found here, before a socket is opened,
and reported as one `ConfigError` line naming the file, the key and the cause. Later
stages (TLS, server, middleware) receive plain typed values and never re-validate.
The dataclasses they receive are in `schema`.
"""
from __future__ import annotations

import configparser
import difflib
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import yaml

from ..errors import ConfigError
from .schema import (
    AllowEntry,
    AppConfig,
    AuthorizationConfig,
    Config,
    IdentityConfig,
    LoggingConfig,
    MetricsConfig,
    Network,
    RuleConfig,
    ServerConfig,
    TLSConfig,
)

TLS_MODES = ("none", "server", "optional", "mutual")
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
REMOTE_USER_SOURCES = ("none", "cn", "dn", "san_uri", "san_dns", "san_email")
ALLOW_FIELDS = (
    "cn", "dn", "issuer_dn", "san_dns", "san_uri", "san_email",
    "serial", "fingerprint_sha256", "any", "anonymous",
)
RULE_KEYS = ("name", "paths", "methods", "allow")
ENGINES = ("eventlet", "threads")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
INI_SUFFIXES = (".ini", ".conf", ".cfg")
YAML_SUFFIXES = (".yaml", ".yml")


# ------------------------------------------------------------------ value parsers
# A parser turns one raw value (typed from YAML, a string from INI) into its typed
# value or raises ValueError with a short cause; `_Section.take` adds file and key.

Parser = Callable[[Any], Any]
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NULL = {"", "null", "none", "~"}


def _is_null(raw: Any) -> bool:
    return raw is None or (isinstance(raw, str) and raw.strip().lower() in _NULL)


def parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
        return raw.strip().lower() in _TRUE
    raise ValueError(f"expected true or false, got {raw!r}")


def int_in(low: int, high: Optional[int] = None) -> Parser:
    def parse(raw: Any) -> int:
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise ValueError(f"expected a whole number, got {raw!r}")
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f">= {low}"
            raise ValueError(f"must be {bounds}, got {value}")
        return value

    return parse


def seconds(allow_zero: bool = False) -> Parser:
    def parse(raw: Any) -> float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise ValueError(f"expected a number of seconds, got {raw!r}")
        try:
            value = float(str(raw).strip())
        except ValueError:
            raise ValueError(f"expected a number of seconds, got {raw!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"expected a finite number of seconds, got {raw!r}")
        if value < 0 or (value == 0 and not allow_zero):
            raise ValueError(f"must be {'>= 0' if allow_zero else '> 0'}, got {raw!r}")
        return value

    return parse


def one_of(*choices: str, case_insensitive: bool = False) -> Parser:
    def parse(raw: Any) -> str:
        text = str(raw).strip() if isinstance(raw, (str, int, float)) else None
        if text is not None:
            for choice in choices:
                if text == choice or (case_insensitive and text.upper() == choice.upper()):
                    return choice
        hint = did_you_mean(str(raw), choices)
        raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}{hint}")

    return parse


def text(raw: Any) -> str:
    if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
        raise ValueError(f"expected a string, got {raw!r}")
    value = str(raw).strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def optional(parser: Parser) -> Parser:
    def parse(raw: Any) -> Any:
        return None if _is_null(raw) else parser(raw)

    return parse


def string_list(raw: Any) -> tuple[str, ...]:
    """A YAML list, or an INI value split on whitespace and newlines."""
    if raw is None:
        return ()
    if isinstance(raw, str):
        return tuple(raw.split())
    if isinstance(raw, (list, tuple)):
        return tuple(text(item) for item in raw)
    raise ValueError(f"expected a list, got {raw!r}")


def closest(word: str, candidates: Any) -> Optional[str]:
    """The candidate `word` is most likely a misspelling of, if any is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.5)
    return close[0] if close else None


def did_you_mean(word: str, candidates: Any) -> str:
    close = closest(word, candidates)
    return f" (did you mean {close!r}?)" if close else ""


# ------------------------------------------------------------------ section reader


class _Section:
    """The raw key/value pairs of one section, consumed key by key.

    `take` removes a key, parses it and wraps any ValueError into a ConfigError
    naming `section.key`; `finish` rejects what is left as unknown keys.
    """

    def __init__(self, source: Path, name: str, raw: Any) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(source, name, f"expected a mapping of keys, got {raw!r}")
        self.source = source
        self.name = name
        self.raw: dict[str, Any] = {str(k): v for k, v in raw.items()}
        self.known: list[str] = []
        self.aliases: dict[str, str] = {}  # alias -> the documented key it stands for
        self.display: dict[str, str] = {}

    def key(self, key: str) -> str:
        return f"{self.name}.{self.display.get(key, key)}"

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.source, self.key(key), message)

    def has(self, key: str) -> bool:
        return key in self.raw

    def take(self, key: str, parser: Parser, default: Any) -> Any:
        self.known.append(key)
        if key not in self.raw:
            return default
        raw = self.raw.pop(key)
        try:
            return parser(raw)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def take_path(self, key: str, kind: str = "file") -> Optional[Path]:
        """A path relative to the config file's directory, which must exist."""
        value = self.take(key, optional(text), None)
        if value is None:
            return None
        return resolve_path(self.source, self.key(key), value, kind)

    def alias(self, alias: str, canonical: str, translate: Parser = lambda v: v) -> None:
        """Accept `alias` (an `ssl.wrap_socket` or oslo.service name) as `canonical`,
        never both together."""
        self.aliases[alias] = canonical
        if alias not in self.raw:
            return
        if canonical in self.raw:
            raise ConfigError(
                self.source,
                f"{self.name}.{alias}",
                f"is an alias of {self.name}.{canonical}; give only one of them",
            )
        raw = self.raw.pop(alias)
        try:
            self.raw[canonical] = translate(raw)
        except ValueError as exc:
            raise ConfigError(self.source, f"{self.name}.{alias}", str(exc)) from None
        self.display[canonical] = alias

    def reject_unknown(self, expected: Sequence[str]) -> None:
        """`finish` before any key is taken: an unknown key (a typo of `expected`) is
        reported as such, not as the missing key it was meant to be."""
        self.known.extend(k for k in expected if k not in self.known)
        self.finish()

    def finish(self) -> None:
        for key in self.raw:
            if key in self.known or key in self.aliases:
                continue  # not taken yet (only before `reject_unknown` returns)
            # A typo of an alias (`key_fiel`) is pointed at the documented key itself.
            close = closest(key, [*self.known, *self.aliases])
            hint = f" (did you mean {self.aliases.get(close, close)!r}?)" if close else ""
            raise ConfigError(self.source, f"{self.name}.{key}", f"unknown key{hint}")


def resolve_path(source: Path, key: str, value: str, kind: str = "file") -> Path:
    """Resolve `value` against the config file's directory and check it exists.

    kind is "file", "dir" or "any"; "new" only checks that the parent directory exists
    (for files securewsgi writes, such as a log file).
    """
    path = Path(os.path.expanduser(value))
    if not path.is_absolute():
        path = source.parent / path
    path = Path(os.path.normpath(path))
    if kind == "new":
        if not path.parent.is_dir():
            raise ConfigError(source, key, f"directory does not exist: {path.parent}")
        return path
    if not path.exists():
        raise ConfigError(source, key, f"no such file or directory: {path}")
    if kind == "file" and not path.is_file():
        raise ConfigError(source, key, f"not a file: {path}")
    if kind == "dir" and not path.is_dir():
        raise ConfigError(source, key, f"not a directory: {path}")
    if not os.access(path, os.R_OK):
        raise ConfigError(source, key, f"permission denied: {path}")
    return path


# ------------------------------------------------------------- environment values

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: str, environ: Mapping[str, str], where: str, source: Path) -> str:
    """Expand `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in environ and (environ[name] or default is None):
            return environ[name]
        if default is not None:
            return default
        raise ConfigError(source, where, f"environment variable {name} is not set")

    return _VAR.sub(substitute, value)


def _expand_tree(node: Any, environ: Mapping[str, str], where: str, source: Path) -> Any:
    if isinstance(node, str):
        return expand_env(node, environ, where, source)
    if isinstance(node, Mapping):
        return {
            k: _expand_tree(v, environ, f"{where}.{k}" if where else str(k), source)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_expand_tree(v, environ, f"{where}[{i}]", source) for i, v in enumerate(node)]
    return node


# --------------------------------------------------------------------- file formats


def yaml_error_text(exc: yaml.YAMLError) -> str:
    """`invalid YAML: line 3, column 5: <problem>`, the one way every YAML file we read
    (service files, policy files, logging files) reports a syntax error."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"invalid YAML: {where}{problem}"


def _read_yaml(source: Path, content: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(content)
    except yaml.YAMLError as exc:
        raise ConfigError(source, None, yaml_error_text(exc)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(source, None, "the top level must be a mapping of sections")
    return data


def _read_ini(source: Path, content: str) -> dict[str, Any]:
    """Map INI sections onto the YAML shape: `[rule:NAME]` become authorization rules."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(content, source=str(source))
    except configparser.Error as exc:
        raise ConfigError(source, None, f"invalid INI: {_first_line(exc)}") from None
    data: dict[str, Any] = {}
    rules: list[dict[str, Any]] = []
    for name in parser.sections():
        values = dict(parser.items(name))
        if name.startswith("rule:"):
            rules.append({"name": name[len("rule:"):].strip(), **_ini_rule(values)})
        elif name == "app.options":
            data.setdefault("app", {})["options"] = values
        else:
            data.setdefault(name, {}).update(values)
    if rules:
        if "rules" in data.get("authorization", {}):
            raise ConfigError(
                source, "authorization.rules", "use [rule:NAME] sections in INI files"
            )
        data.setdefault("authorization", {})["rules"] = rules
    return data


def _ini_rule(values: dict[str, str]) -> dict[str, Any]:
    rule: dict[str, Any] = dict(values)
    if "allow" in values:
        rule["allow"] = [_ini_allow_line(line) for line in values["allow"].splitlines()
                         if line.strip()]
    return rule


def _ini_allow_line(line: str) -> dict[str, Any]:
    """`cn:ops-* & issuer_dn:CN=Dev CA` -> {"cn": "ops-*", "issuer_dn": "CN=Dev CA"}."""
    entry: dict[str, Any] = {}
    for part in line.split(" & "):
        key, sep, value = part.strip().partition(":")
        key = key.strip()
        if key in ("any", "anonymous") and not sep:
            value = "true"
        entry[key] = value.strip() if sep or key in ("any", "anonymous") else None
    return entry


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# ------------------------------------------------------------------ section schemas


def _workers(raw: Any) -> int:
    if isinstance(raw, str) and raw.strip().lower() == "auto":
        return os.cpu_count() or 1
    return int_in(1, 1024)(raw)


def _keepalive(raw: Any) -> Union[bool, float]:
    if isinstance(raw, bool) or (isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE):
        return parse_bool(raw)
    try:
        return seconds()(raw)
    except ValueError:
        raise ValueError(f"expected true, false or a number of seconds, got {raw!r}") from None


def _read_server(source: Path, raw: Any) -> ServerConfig:
    s = _Section(source, "server", raw)
    d = ServerConfig()
    monkey_patch_given = s.has("monkey_patch")
    cfg = ServerConfig(
        host=s.take("host", text, d.host),
        port=s.take("port", int_in(0, 65535), d.port),
        backlog=s.take("backlog", int_in(1, 65535), d.backlog),
        workers=s.take("workers", _workers, d.workers),
        max_connections=s.take("max_connections", int_in(1, 1_000_000), d.max_connections),
        handshake_timeout=s.take("handshake_timeout", seconds(), d.handshake_timeout),
        socket_timeout=s.take("socket_timeout", seconds(), d.socket_timeout),
        keepalive=s.take("keepalive", _keepalive, d.keepalive),
        shutdown_timeout=s.take("shutdown_timeout", seconds(allow_zero=True), d.shutdown_timeout),
        header_timeout=s.take("header_timeout", seconds(), d.header_timeout),
        max_header_count=s.take("max_header_count", int_in(1, 10_000), d.max_header_count),
        max_header_bytes=s.take("max_header_bytes", int_in(1024, 1 << 24), d.max_header_bytes),
        max_request_body=s.take("max_request_body", optional(int_in(0)), None),
        max_http_version=s.take(
            "max_http_version", one_of("HTTP/1.1", "HTTP/1.0"), d.max_http_version
        ),
        url_length_limit=s.take("url_length_limit", int_in(64, 1 << 20), d.url_length_limit),
        minimum_chunk_size=s.take("minimum_chunk_size", int_in(0), d.minimum_chunk_size),
        capitalize_response_headers=s.take(
            "capitalize_response_headers", parse_bool, d.capitalize_response_headers
        ),
        log_x_forwarded_for=s.take("log_x_forwarded_for", parse_bool, d.log_x_forwarded_for),
        monkey_patch=s.take("monkey_patch", parse_bool, d.monkey_patch),
        proxy_protocol=s.take("proxy_protocol", parse_bool, d.proxy_protocol),
        engine=s.take("engine", one_of(*ENGINES), d.engine),
        threads=s.take("threads", int_in(1, 4096), d.threads),
        max_handshakes=s.take("max_handshakes", int_in(1, 1_000_000), d.max_handshakes),
        max_handshakes_per_ip=s.take("max_handshakes_per_ip", int_in(0, 1_000_000),
                                     d.max_handshakes_per_ip),
        worker_timeout=s.take("worker_timeout", seconds(allow_zero=True), d.worker_timeout),
    )
    if cfg.engine == "threads" and cfg.monkey_patch and monkey_patch_given:
        raise s.error("monkey_patch", "applies to the eventlet engine only; remove it (or "
                      "set it to false) with server.engine: threads")
    s.finish()
    return cfg


_CERT_REQS = {"CERT_NONE": "server", "CERT_OPTIONAL": "optional", "CERT_REQUIRED": "mutual"}
_SSL_VERSIONS = {
    # `ssl_version` (the ssl.wrap_socket argument) and oslo.service `version`
    # spellings -> our minimum version
    "PROTOCOL_TLSV1_2": "TLSv1.2", "TLSV1_2": "TLSv1.2", "TLSV1.2": "TLSv1.2",
    "PROTOCOL_TLSV1_3": "TLSv1.3", "TLSV1_3": "TLSv1.3", "TLSV1.3": "TLSv1.3",
    # "negotiate the best version": our floor is TLS 1.2 anyway
    "PROTOCOL_TLS": "TLSv1.2", "PROTOCOL_TLS_SERVER": "TLSv1.2",
    "PROTOCOL_SSLV23": "TLSv1.2", "SSLV23": "TLSv1.2",
}
_TOO_OLD = re.compile(r"^(PROTOCOL_)?(SSLV2|SSLV3|TLSV1|TLSV1[._]0|TLSV1[._]1)$")


def _cert_reqs(raw: Any) -> str:
    value = str(raw).strip().upper()
    if value.startswith("SSL."):
        value = value[4:]
    if value in _CERT_REQS:
        return _CERT_REQS[value]
    raise ValueError(f"must be one of {', '.join(_CERT_REQS)}, got {raw!r}")


def _ssl_version(raw: Any) -> str:
    value = str(raw).strip().upper()
    if value.startswith("SSL."):
        value = value[4:]
    if value in _SSL_VERSIONS:
        return _SSL_VERSIONS[value]
    if _TOO_OLD.match(value):
        raise ValueError(f"{raw} is below TLS 1.2, which securewsgi refuses")
    raise ValueError(f"unknown TLS version {raw!r}; use PROTOCOL_TLSv1_2 or TLSv1_3")


def _tls_version(raw: Any) -> str:
    value = str(raw).strip()
    if _TOO_OLD.match(value.upper()) or value.upper() in ("TLSV1.0", "TLSV1.1", "SSLV3"):
        raise ValueError(f"{value} is below TLS 1.2, which securewsgi refuses; use TLSv1.2")
    return one_of(*TLS_VERSIONS)(value)


def _read_tls(source: Path, raw: Any) -> TLSConfig:
    s = _Section(source, "tls", raw)
    s.alias("cert_reqs", "mode", _cert_reqs)
    s.alias("ssl_version", "min_version", _ssl_version)
    s.alias("version", "min_version", _ssl_version)
    s.alias("cert_file", "certfile")
    s.alias("key_file", "keyfile")
    s.alias("ca_file", "ca_certs")
    # The handshake always runs in the connection's own greenthread; accepted for
    # compatibility with code that passed it to ssl.wrap_socket.
    s.take("do_handshake_on_connect", parse_bool, True)
    # Accepted (a boolean, or an error) for code that passed it to ssl.wrap_socket, and
    # ignored: a client that closes TCP without a TLS close_notify ends its connection
    # either way, and HTTP/1.1 frames each request (Content-Length or chunks), so a
    # request cut short is recognised as incomplete whatever the setting says.
    s.take("suppress_ragged_eofs", parse_bool, True)
    d = TLSConfig()
    mode = s.take("mode", one_of(*TLS_MODES), None)
    certfile = s.take_path("certfile")
    keyfile = s.take_path("keyfile")
    ca_certs = s.take_path("ca_certs", kind="any")
    crl_file = s.take_path("crl_file")
    if mode is None:
        # Like oslo.service: naming a client CA means client certificates are required.
        mode = "mutual" if ca_certs is not None else "server"
    cfg = TLSConfig(
        mode=mode,
        certfile=certfile,
        keyfile=keyfile,
        key_password=s.take("key_password", optional(_raw_text), None),
        ca_certs=ca_certs,
        crl_file=crl_file,
        min_version=s.take("min_version", _tls_version, d.min_version),
        max_version=s.take("max_version", optional(_tls_version), None),
        ciphers=s.take("ciphers", optional(text), None),
        reload_interval=s.take("reload_interval", seconds(allow_zero=True), d.reload_interval),
        session_tickets=s.take("session_tickets", _tickets, None),
        expiry_warning_days=s.take("expiry_warning_days", int_in(0, 3650),
                                   d.expiry_warning_days),
    )
    s.finish()
    _check_tls(s, cfg)
    return cfg


def _tickets(raw: Any) -> Optional[int]:
    if isinstance(raw, str) and raw.strip().lower() == "auto":
        return None
    return int_in(0, 8)(raw)


def _raw_text(raw: Any) -> str:
    """Passwords keep their spaces: only refuse non-scalars."""
    if isinstance(raw, (dict, list)):
        raise ValueError("expected a string")
    return str(raw)


def _check_tls(s: _Section, cfg: TLSConfig) -> None:
    if cfg.mode == "none":
        return
    if cfg.certfile is None:
        raise s.error("certfile", f"required when tls.mode is {cfg.mode}")
    if cfg.mode in ("optional", "mutual") and cfg.ca_certs is None:
        raise s.error(
            "ca_certs", f"required when tls.mode is {cfg.mode} (the CA that signs client certs)"
        )
    if cfg.crl_file is not None and cfg.ca_certs is None:
        raise s.error("crl_file", "needs tls.ca_certs (a CRL is checked against the client CA)")
    if cfg.max_version and TLS_VERSIONS.index(cfg.max_version) < TLS_VERSIONS.index(
        cfg.min_version
    ):
        raise s.error("max_version", f"{cfg.max_version} is below min_version {cfg.min_version}")


def _read_app(source: Path, raw: Any) -> AppConfig:
    s = _Section(source, "app", raw)
    factory = s.take("factory", optional(text), None)
    options = s.take("options", _mapping, {})
    paste_given = s.has("paste")
    paste = s.take_path("paste")
    name = s.take("name", text, "main")
    python_path = tuple(
        resolve_path(source, f"app.python_path[{i}]", entry, kind="dir")
        for i, entry in enumerate(s.take("python_path", _path_list, ()))
    )
    s.finish()
    if factory and paste_given:
        raise s.error("paste", "give either app.factory or app.paste, not both")
    if not factory and not paste_given:
        raise ConfigError(source, "app", "set app.factory (module:attribute) or app.paste")
    if factory and not re.fullmatch(r"[\w.]+:[\w.]+", factory):
        raise s.error("factory", f"expected 'package.module:attribute', got {factory!r}")
    if options and not factory:
        raise s.error("options", "only used with app.factory")
    return AppConfig(factory=factory, options=options, paste=paste, name=name,
                     python_path=python_path)


def _mapping(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"expected a mapping of keyword arguments, got {raw!r}")
    return {str(k): v for k, v in raw.items()}


def _path_list(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        return tuple(line.strip() for line in raw.splitlines() if line.strip())
    return string_list(raw)


def header_name(raw: Any) -> str:
    value = text(raw).lower()
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", value):
        raise ValueError(f"not an HTTP header name: {raw!r}")
    return value


def parse_networks(raw: Any) -> tuple[Network, ...]:
    networks = []
    for item in string_list(raw):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or CIDR: {item!r}") from None
    return tuple(networks)


def _read_identity(source: Path, raw: Any) -> IdentityConfig:
    s = _Section(source, "identity", raw)
    d = IdentityConfig()
    cfg = IdentityConfig(
        remote_user=s.take("remote_user", one_of(*REMOTE_USER_SOURCES), d.remote_user),
        trusted_proxies=s.take("trusted_proxies", parse_networks, ()),
        forwarded_cert_header=s.take(
            "forwarded_cert_header", header_name, d.forwarded_cert_header
        ),
        trusted_proxy_identities=_allow_entries(
            source, "identity.trusted_proxy_identities",
            s.take("trusted_proxy_identities", lambda v: v, None)),
        strip_identity_headers=s.take("strip_identity_headers", parse_bool,
                                      d.strip_identity_headers),
        client_cert_from=s.take("client_cert_from", one_of("none", "server"),
                                d.client_cert_from),
    )
    if cfg.client_cert_from == "server":
        # securewsgi-run does the TLS handshake itself: there is no hosting server
        # whose SSL_CLIENT_CERT could be the identity, only what a request carries.
        raise s.error("client_cert_from", "'server' is only for the Paste filter or "
                      "IdentityMiddleware under another server (Apache mod_wsgi, uWSGI "
                      "behind nginx); securewsgi-run verifies client certificates itself "
                      "(tls.mode optional or mutual): remove it or set it to none")
    s.finish()
    return cfg


def _allow_entries(source: Path, where: str, raw: Any) -> tuple[AllowEntry, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):  # INI: one entry per line, as in `allow`
        raw = [_ini_allow_line(line) for line in raw.splitlines() if line.strip()]
    if not isinstance(raw, list):
        raise ConfigError(source, where, "expected a list of allow entries")
    return tuple(read_allow_entry(source, f"{where}[{i}]", e) for i, e in enumerate(raw))


def read_allow_entry(source: Path, where: str, raw: Any) -> AllowEntry:
    """Validate the shape of one allow entry; patterns are compiled by `authz`."""
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(source, where, f"expected a mapping like {{cn: 'ops-*'}}, got {raw!r}")
    conditions = []
    for key, value in raw.items():
        key = str(key)
        if key not in ALLOW_FIELDS:
            hint = did_you_mean(key, ALLOW_FIELDS)
            raise ConfigError(source, f"{where}.{key}", f"unknown allow field{hint}")
        if key in ("any", "anonymous"):
            try:
                if not parse_bool(value):
                    raise ValueError(f"only '{key}: true' is meaningful")
            except ValueError as exc:
                raise ConfigError(source, f"{where}.{key}", str(exc)) from None
            conditions.append((key, "true"))
            continue
        if value is None or isinstance(value, (dict, list, bool)) or str(value) == "":
            raise ConfigError(source, f"{where}.{key}", f"expected a pattern, got {value!r}")
        conditions.append((key, str(value)))
    return AllowEntry(tuple(conditions))


def read_rules(
    source: Any, raw: Any, where: str = "authorization.rules"
) -> tuple[RuleConfig, ...]:
    """Validate the rule list: the one place rule names are checked to be unique.

    Shared by service files, the Paste `policy_file` and `IdentityMiddleware(rules=)`,
    whose list may also hold ready `RuleConfig` objects.
    """
    if raw is None:
        return ()
    if isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, Iterable):
        raise ConfigError(source, where, "expected a list of rules")
    rules: list[RuleConfig] = []
    seen = set()
    for index, item in enumerate(raw):
        rule = item if isinstance(item, RuleConfig) else read_rule(
            source, f"{where}[{index}]", item)
        if rule.name in seen:
            raise ConfigError(source, f"{where}[{rule.name}]", "duplicate rule name")
        seen.add(rule.name)
        rules.append(rule)
    return tuple(rules)


def read_rule(source: Path, where: str, raw: Any) -> RuleConfig:
    if isinstance(raw, Mapping) and raw.get("name"):
        where = f"{where.rsplit('[', 1)[0]}[{raw['name']}]"
    s = _Section(source, where, raw)
    s.reject_unknown(RULE_KEYS)  # `path:` is a typo of `paths`, not a rule without paths
    name = s.take("name", text, None)
    if name is None:
        raise ConfigError(source, f"{where}.name", "every rule needs a name")
    paths = s.take("paths", string_list, ())
    if not paths:
        raise s.error("paths", "a rule needs at least one path pattern")
    for path in paths:
        if not path.startswith("/"):
            raise s.error("paths", f"path patterns start with '/', got {path!r}")
    methods = tuple(m.upper() for m in s.take("methods", string_list, ()))
    for method in methods:
        if not re.fullmatch(r"[A-Z]+", method):
            raise s.error("methods", f"not an HTTP method: {method!r}")
    allow_raw = s.take("allow", lambda v: v, [])
    if allow_raw is None:
        allow_raw = []
    if not isinstance(allow_raw, list):
        raise s.error("allow", "expected a list of allow entries")
    allow = tuple(
        read_allow_entry(source, f"{where}.allow[{i}]", entry) for i, entry in enumerate(allow_raw)
    )
    s.finish()
    return RuleConfig(name=name, paths=paths, methods=methods, allow=allow)


def _read_authorization(source: Path, raw: Any) -> AuthorizationConfig:
    s = _Section(source, "authorization", raw)
    default = s.take("default", one_of("allow", "deny"), "allow")
    rules = s.take("rules", lambda v: v, None)
    s.finish()
    return AuthorizationConfig(default=default, rules=read_rules(source, rules))


def _access_log(source: Path) -> Parser:
    def parse(raw: Any) -> Union[str, Path, None]:
        if raw is False or (isinstance(raw, str) and raw.strip().lower() in _FALSE | {"none"}):
            return None
        value = text(raw)
        if value in ("-", "stdout"):
            return "-"
        if value == "stderr":
            return "stderr"
        return resolve_path(source, "logging.access_log", value, kind="new")

    return parse


def _read_logging(source: Path, raw: Any) -> LoggingConfig:
    s = _Section(source, "logging", raw)
    d = LoggingConfig()
    level_given = s.has("level")
    cfg = LoggingConfig(
        level=s.take("level", one_of(*LOG_LEVELS, case_insensitive=True), d.level),
        access_log=s.take("access_log", _access_log(source), d.access_log),
        format=s.take("format", one_of("text", "json"), d.format),
        config_file=s.take_path("config_file"),
    )
    s.finish()
    if cfg.config_file is not None:
        if level_given:
            # The file sets the levels; a second, silently ignored level would mislead.
            raise s.error("level", "has no effect with logging.config_file: set the "
                          "levels in that file")
        from ..logs import read_logging_file  # logs imports this module

        try:
            read_logging_file(cfg.config_file)
        except ValueError as exc:
            raise s.error("config_file", f"{cfg.config_file}: {exc}") from None
    return cfg


def _metrics_host(raw: Any) -> str:
    """An IP address or a host name to bind; brackets around IPv6 are optional."""
    value = text(raw)
    bare = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", bare):
        raise ValueError(f"expected an IP address or a host name, got {raw!r}")
    return bare


def _read_metrics(source: Path, raw: Any) -> MetricsConfig:
    s = _Section(source, "metrics", raw)
    d = MetricsConfig()
    host_given = s.has("host")
    cfg = MetricsConfig(
        port=s.take("port", optional(int_in(0, 65535)), d.port),
        host=s.take("host", _metrics_host, d.host),
    )
    s.finish()
    if host_given and cfg.port is None:
        # Metrics are off without a port; a host alone would be silently ignored.
        raise s.error("host", "has no effect without metrics.port (metrics are off "
                      "unless a port is set)")
    return cfg


_SECTIONS: dict[str, Callable[[Path, Any], Any]] = {
    "server": _read_server,
    "tls": _read_tls,
    "app": _read_app,
    "identity": _read_identity,
    "authorization": _read_authorization,
    "logging": _read_logging,
    "metrics": _read_metrics,
}


# ------------------------------------------------------------------------- loading


Overrides = Mapping[str, Mapping[str, Any]]

# Overriding a canonical key also drops the file's alias of it: the command line
# replaces the value, it does not give the same setting twice.
_OVERRIDE_REPLACES = {
    "tls": {"certfile": ("cert_file",), "keyfile": ("key_file",), "ca_certs": ("ca_file",),
            "mode": ("cert_reqs",), "min_version": ("ssl_version", "version")},
}


def load_config(path: Union[str, Path], environ: Optional[Mapping[str, str]] = None,
                overrides: Optional[Overrides] = None) -> Config:
    """Load and validate a service file; raise `ConfigError` with a one-line cause.

    `overrides` ({"server": {"port": 9443}, ...}) replace the file's values before
    validation, so a value from the command line is checked exactly as one from the
    file. They are not `${VAR}`-expanded, and a relative path in them is resolved
    against the config file's directory: callers pass absolute paths.
    """
    source, data = read_sections(path, environ)
    return config_from_dict(source, apply_overrides(data, overrides or {}))


def apply_overrides(data: Mapping[str, Any], overrides: Overrides) -> dict[str, Any]:
    """A copy of the raw sections with `overrides` merged in key by key."""
    merged = dict(data)
    for name, values in overrides.items():
        section = merged.get(name)
        if section is None:
            section = {}
        if not isinstance(section, Mapping):
            continue  # validation reports the malformed section itself
        section = dict(section)
        for key, value in values.items():
            for alias in _OVERRIDE_REPLACES.get(name, {}).get(key, ()):
                section.pop(alias, None)
            section[key] = value
        merged[name] = section
    return merged


def read_sections(path: Union[str, Path], environ: Optional[Mapping[str, str]] = None
                  ) -> tuple[Path, dict[str, Any]]:
    """(absolute path, raw env-expanded sections) of a service file, not yet validated."""
    source = Path(os.path.abspath(os.fspath(path)))
    environ = os.environ if environ is None else environ
    try:
        content = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, None, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, None, f"cannot read: {_first_line(exc)}") from None
    suffix = source.suffix.lower()
    if suffix in INI_SUFFIXES:
        data = _read_ini(source, content)
    elif suffix in YAML_SUFFIXES:
        data = _read_yaml(source, content)
    else:
        raise ConfigError(
            source, None, "unknown file type: name it .yaml/.yml (YAML) or .ini/.conf/.cfg (INI)"
        )
    return source, _expand_tree(data, environ, "", source)


def config_from_dict(source: Path, data: Mapping[str, Any]) -> Config:
    """Build a `Config` from already-parsed (and env-expanded) sections."""
    for name in data:
        if name not in _SECTIONS:
            hint = did_you_mean(str(name), _SECTIONS)
            raise ConfigError(source, str(name), f"unknown section{hint}")
    sections = {name: reader(source, data.get(name)) for name, reader in _SECTIONS.items()}
    config = Config(source=source, **sections)
    _check_across_sections(config)
    return config


def _check_across_sections(config: Config) -> None:
    """Settings that are only wrong in combination."""
    if config.server.proxy_protocol and not config.identity.trusted_proxies:
        raise config.error("server.proxy_protocol", "needs identity.trusted_proxies: a PROXY "
                           "header is read only from those addresses")
    if config.metrics.port and config.metrics.port == config.server.port:
        raise config.error("metrics.port", f"is server.port ({config.server.port}): "
                           "/metrics needs a port of its own")
    if config.identity.trusted_proxy_identities and config.tls.mode not in ("optional",
                                                                             "mutual"):
        raise config.error("identity.trusted_proxy_identities",
                           "needs tls.mode optional or mutual: proxies prove who they are "
                           "with a client certificate")
