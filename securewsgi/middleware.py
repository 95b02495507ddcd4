"""`IdentityMiddleware`: who is calling (SPEC §5) and may they (SPEC §6)?

Per request, in this order:

1. Remove every key a client or an earlier layer could have planted under our names
   (``SSL_CLIENT_*``, ``REMOTE_USER``, ``securewsgi.peer``) and the forwarded-certificate
   header.
2. Pick the effective peer: the `PeerIdentity` our own TLS handshake verified
   (``environ["securewsgi.tls_peer"]``), or -- only when ``REMOTE_ADDR`` is a trusted
   proxy -- the certificate in the forwarded header (a malformed one is a 400).
3. Fill the mod_ssl-style keys, ``REMOTE_USER`` and ``securewsgi.peer``.
4. If there are rules: check and normalise the path (400 for ambiguous paths), then let
   the first matching rule decide (403 when denied).

Everything that can be computed earlier is: rules and patterns at start-up, the
certificate's environ keys once per connection (`PeerIdentity.environ`), forwarded
certificates and trusted-proxy lookups once per distinct value (LRU caches).
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import yaml

from . import config as _config
from .authz import Decision, Policy, compile_entry, compile_policy
from .config import AllowEntry, AuthorizationConfig, IdentityConfig, RuleConfig
from .errors import ConfigError
from .forwarded import XFCC_HEADER, ForwardedCertError, ForwardedCertReader, TrustedProxies
from .identity import PeerIdentity
from .paths import PathError, judge_path
from .tlsfacts import PROXIED_BY_KEY, TLS_PEER_KEY

__all__ = ["PEER_KEY", "IdentityMiddleware", "filter_factory"]

PEER_KEY = "securewsgi.peer"
WSGIApp = Callable[..., Iterable[bytes]]

log = logging.getLogger("securewsgi.identity")
authz_log = logging.getLogger("securewsgi.authz")

_FORBIDDEN = b"403 Forbidden: access to this resource is not allowed\n"
_BAD_PATH = b"400 Bad Request: ambiguous request path\n"
_BAD_FORWARDED = b"400 Bad Request: unusable forwarded client certificate\n"


def _refuse(start_response: Callable, status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body)))])
    return [body]


def _printable(text: str, limit: int = 300) -> str:
    """Log-safe: no line breaks or control characters from request data."""
    if text.isprintable() and len(text) <= limit:
        return text
    cleaned = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


class IdentityMiddleware:
    """Puts the verified client certificate into environ and enforces allow-rules.

    ``rules`` is a sequence of `RuleConfig` or of plain dicts shaped as in YAML
    (``{"name": ..., "paths": [...], "methods": [...], "allow": [{"cn": ...}]}``).
    Invalid arguments raise `ConfigError` with source "IdentityMiddleware".
    """

    SOURCE = "IdentityMiddleware"

    def __init__(
        self,
        app: WSGIApp,
        *,
        remote_user: str = "none",
        trusted_proxies: Union[str, Iterable[Any]] = (),
        forwarded_cert_header: str = XFCC_HEADER,
        rules: Sequence[Union[RuleConfig, Mapping[str, Any]]] = (),
        default: str = "allow",
        trusted_proxy_identities: Sequence[Union[AllowEntry, Mapping[str, Any]]] = (),
        _source: Union[str, Path, None] = None,
        _policy: Optional[Policy] = None,
    ) -> None:
        source = _source if _source is not None else self.SOURCE
        self.app = app
        self.remote_user = _option(source, "remote_user", remote_user,
                                   _config.one_of(*_config.REMOTE_USER_SOURCES))
        proxies = _option(source, "trusted_proxies", trusted_proxies, _networks)
        header = _option(source, "forwarded_cert_header", forwarded_cert_header,
                         _config.header_name)
        if _policy is None:
            default = _option(source, "default", default, _config.one_of("allow", "deny"))
            _policy = compile_policy(_rules(source, rules), default, source, "rules")
        self.policy = _policy
        self.trusted_proxies = TrustedProxies(proxies)
        self.proxy_identities = _proxy_identities(source, trusted_proxy_identities)
        self.forwarded = ForwardedCertReader(header)
        self._header_key = self.forwarded.environ_key
        self._warned_no_tls = False

    @classmethod
    def from_config(cls, app: WSGIApp, identity: IdentityConfig,
                    authorization: AuthorizationConfig,
                    source: Union[str, Path, None] = None) -> IdentityMiddleware:
        """Build from the validated `identity` and `authorization` sections."""
        policy = compile_policy(authorization.rules, authorization.default, source)
        return cls(app, remote_user=identity.remote_user,
                   trusted_proxies=identity.trusted_proxies,
                   forwarded_cert_header=identity.forwarded_cert_header,
                   trusted_proxy_identities=identity.trusted_proxy_identities,
                   _source=source, _policy=policy)

    # ------------------------------------------------------------------ per request

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        # 1. nothing under our names survives unless we put it there. An environ that
        # securewsgi's own protocol built (it carries TLS_PEER_KEY, and no identity layer
        # ran yet) holds only HTTP_* keys from the client: the scan would find nothing.
        if PEER_KEY in environ or TLS_PEER_KEY not in environ:
            planted = [k for k in environ if k.startswith("SSL_CLIENT_")]
            for key in planted:
                del environ[key]
        environ.pop("REMOTE_USER", None)
        header = environ.pop(self._header_key, None)

        # 2. the effective peer
        try:
            peer: Optional[PeerIdentity] = environ[TLS_PEER_KEY]
        except KeyError:
            peer = None
            if not self._warned_no_tls:
                self._warned_no_tls = True
                log.warning(
                    "environ has no %r: not running under securewsgi's server, so direct "
                    "clients are anonymous%s", TLS_PEER_KEY,
                    " (certificates forwarded by trusted proxies are still used)"
                    if self.trusted_proxies else "")
        if self._trusts_forwarder(environ, peer):
            # A trusted proxy speaks for its client: the proxy's own certificate is not
            # the caller's identity, and no forwarded certificate means anonymous.
            try:
                peer = self.forwarded.peer(header) if header else None
            except ForwardedCertError as exc:
                log.warning("refused forwarded client certificate from trusted proxy %s: %s",
                            environ.get("REMOTE_ADDR"), exc)
                environ[PEER_KEY] = None
                return _refuse(start_response, "400 Bad Request", _BAD_FORWARDED)

        # 3. what the application sees
        environ[PEER_KEY] = peer
        if peer is None:
            environ["SSL_CLIENT_VERIFY"] = "NONE"
        else:
            environ.update(peer.environ())
            # the cached keys are per connection; the days left are per request
            environ["SSL_CLIENT_V_REMAIN"] = str(
                max(0, int((peer.not_after.timestamp() - time.time()) // 86400)))
            if self.remote_user != "none":
                user = self._remote_user(peer)
                if user:
                    environ["REMOTE_USER"] = user

        # 4. authorization
        if self.policy.active:
            try:
                path = judge_path(environ)
            except PathError as exc:
                authz_log.info("refused ambiguous path %s: %s",
                               _printable(environ.get("RAW_PATH_INFO")
                                          or environ.get("PATH_INFO", "")), exc.reason)
                return _refuse(start_response, "400 Bad Request", _BAD_PATH)
            method = environ.get("REQUEST_METHOD") or "GET"
            decision = self.policy.decide(path, method, peer)
            if not decision.allowed:
                self._log_denied(decision, method, path, peer)
                return _refuse(start_response, "403 Forbidden", _FORBIDDEN)
        return self.app(environ, start_response)

    def _trusts_forwarder(self, environ: dict[str, Any], tls_peer: Optional[PeerIdentity]
                          ) -> bool:
        """May this connection speak for another client? Its address must be in
        trusted_proxies and/or its own TLS certificate match trusted_proxy_identities
        (each check applies when configured; at least one must be)."""
        if not self.trusted_proxies and not self.proxy_identities:
            return False
        if environ.get(PROXIED_BY_KEY):  # passed through a TCP proxy: headers are the client's
            return False
        if self.trusted_proxies and environ.get("REMOTE_ADDR") not in self.trusted_proxies:
            return False
        if self.proxy_identities:
            return tls_peer is not None and tls_peer.source == "tls" and any(
                matches(tls_peer) for matches in self.proxy_identities)
        return True

    def _remote_user(self, peer: PeerIdentity) -> Optional[str]:
        source = self.remote_user
        if source == "cn":
            return peer.common_name
        if source == "dn":
            return peer.subject
        values = getattr(peer, source)  # san_uri, san_dns, san_email
        return values[0] if values else None

    @staticmethod
    def _log_denied(decision: Decision, method: str, path: str,
                    peer: Optional[PeerIdentity]) -> None:
        client = "anonymous" if peer is None else f"{peer.subject} (via {peer.source})"
        authz_log.warning("denied by rule %s: %s %s client=%s", decision.rule,
                          _printable(method, 20), _printable(path), _printable(client))


# ----------------------------------------------------------------- option parsing


def _option(source: Any, key: str, value: Any, parse: Callable[[Any], Any]) -> Any:
    try:
        return parse(value)
    except ValueError as exc:
        raise ConfigError(source, key, str(exc)) from None


def _networks(raw: Any) -> tuple:
    """CIDR strings (a list, or one space-separated string) or ip_network objects."""
    if isinstance(raw, (str, bytes)):
        return _config.parse_networks(raw)
    items = list(raw or ())
    networks = [item for item in items if not isinstance(item, str)]
    if not all(hasattr(n, "version") and hasattr(n, "network_address") for n in networks):
        raise ValueError(f"expected CIDR strings or ipaddress networks, got {raw!r}")
    return tuple(networks) + _config.parse_networks([i for i in items if isinstance(i, str)])


def _proxy_identities(source: Any, entries: Sequence[Union[AllowEntry, Mapping[str, Any]]]
                      ) -> tuple:
    where = "trusted_proxy_identities"
    compiled = []
    for index, entry in enumerate(entries or ()):
        if not isinstance(entry, AllowEntry):
            entry = _config.read_allow_entry(source, f"{where}[{index}]", entry)
        compiled.append(compile_entry(entry, source, f"identity.{where}[{index}]"))
    return tuple(compiled)


def _rules(source: Any, rules: Sequence[Union[RuleConfig, Mapping[str, Any]]]
           ) -> tuple:
    if isinstance(rules, (str, bytes, Mapping)):
        raise ConfigError(source, "rules", "expected a list of rules")
    out: list[RuleConfig] = []
    seen = set()
    for index, rule in enumerate(rules or ()):
        if not isinstance(rule, RuleConfig):
            rule = _config.read_rule(source, f"rules[{index}]", rule)
        if rule.name in seen:
            raise ConfigError(source, f"rules[{rule.name}]", "duplicate rule name")
        seen.add(rule.name)
        out.append(rule)
    return tuple(out)


# -------------------------------------------------------------------- Paste Deploy

_PASTE_OPTIONS = ("remote_user", "trusted_proxies", "forwarded_cert_header", "default",
                  "policy_file")


def filter_factory(global_conf: Mapping[str, Any], **local_conf: Any
                   ) -> Callable[[WSGIApp], IdentityMiddleware]:
    """Paste Deploy ``paste.filter_factory`` (``use = egg:securewsgi#identity``).

    Options: ``remote_user``, ``trusted_proxies`` (space separated CIDRs),
    ``forwarded_cert_header``, ``default`` and ``policy_file`` (YAML with ``rules:``
    and optionally ``default:``, relative to the Paste file's directory). Everything is
    validated here, when the pipeline is loaded, not on the first request.
    """
    source = global_conf.get("__file__") or "paste filter securewsgi#identity"
    for key in local_conf:
        if key not in _PASTE_OPTIONS:
            hint = _config.did_you_mean(key, _PASTE_OPTIONS)
            raise ConfigError(source, key, f"unknown option{hint}")
    rules: tuple = ()
    default = local_conf.get("default")
    policy_file = local_conf.get("policy_file")
    if policy_file:
        path = _policy_path(source, global_conf, str(policy_file).strip())
        policy_default, rules = _read_policy_file(path)
        if policy_default is not None:
            if default is not None:
                raise ConfigError(source, "default",
                                  f"also set in {path}; give the default in one place")
            default = policy_default
    trusted = local_conf.get("trusted_proxies", "")
    kwargs = dict(
        remote_user=str(local_conf.get("remote_user", "none")).strip(),
        trusted_proxies=str(trusted),
        forwarded_cert_header=str(local_conf.get("forwarded_cert_header", XFCC_HEADER)),
    )
    default = _option(source, "default", default or "allow", _config.one_of("allow", "deny"))
    if policy_file:
        policy = compile_policy(rules, default, path, where="rules")
    else:
        policy = compile_policy((), default, source)
    # build once now so every option error surfaces while the pipeline loads
    IdentityMiddleware(_noop_app, **kwargs, _source=source, _policy=policy)

    def make(app: WSGIApp) -> IdentityMiddleware:
        return IdentityMiddleware(app, **kwargs, _source=source, _policy=policy)

    return make


def _policy_path(source: Any, global_conf: Mapping[str, Any], value: str) -> Path:
    """`policy_file` relative to the Paste file's directory (``global_conf['here']``)."""
    path = Path(os.path.expanduser(value))
    if not path.is_absolute():
        here = global_conf.get("here") or os.path.dirname(os.path.abspath(str(source)))
        path = Path(here) / path
    path = Path(os.path.normpath(path))
    if not path.is_file():
        raise ConfigError(source, "policy_file", f"no such file: {path}")
    return path


def _noop_app(environ: dict[str, Any], start_response: Callable) -> list[bytes]:
    return []


def _read_policy_file(path: Path) -> tuple:
    """(default or None, rules) from a YAML policy file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(path, None, f"invalid YAML: {where}"
                                      f"{getattr(exc, 'problem', None) or exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, None, "expected a mapping with 'rules:' (and 'default:')")
    for key in data:
        if key not in ("rules", "default"):
            hint = _config.did_you_mean(str(key), ("rules", "default"))
            raise ConfigError(path, str(key), f"unknown key{hint}")
    default = data.get("default")
    if default is not None:
        default = _option(path, "default", default, _config.one_of("allow", "deny"))
    return default, _config.read_rules(path, data.get("rules"), where="rules")
