"""`IdentityMiddleware`: who is calling, and may they?

Per request, in this order:

1. Find the connection's verified peer: the `PeerIdentity` our own TLS handshake
   verified (``environ["securewsgi.tls_peer"]``), or -- with ``client_cert_from =
   server``, under another server -- the hosting server's ``SSL_CLIENT_CERT`` when its
   ``SSL_CLIENT_VERIFY`` is ``SUCCESS`` (an unusable one is a 400).
2. Remove every key a client or an earlier layer could have planted under our names
   (``SSL_CLIENT_*``, ``REMOTE_USER``, ``securewsgi.peer``), the forwarded-certificate
   header, and -- unless a trusted proxy sent them -- request headers that look like
   identity (``X-SSL-Client-*``, ``Remote-User``, ...; see `IDENTITY_HEADER_PREFIXES`).
3. Pick the effective peer: the connection's, or -- only when the connection is a
   trusted proxy -- the certificate in the forwarded header (a malformed one is a 400).
4. Fill the mod_ssl-style keys, ``REMOTE_USER`` and ``securewsgi.peer``.
5. If there are rules: check and normalise the path (400 for ambiguous paths), then let
   the first matching rule decide (403 when denied).

Everything that can be computed earlier is: rules and patterns at start-up, the
certificate's environ keys once per connection (`PeerIdentity.environ`), forwarded
certificates and trusted-proxy lookups once per distinct value (LRU caches).
"""
from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import yaml

from .. import metrics
from ..config import AllowEntry, AuthorizationConfig, IdentityConfig, RuleConfig
from ..config import loader as _config
from ..errors import ConfigError
from ..text import printable
from ..tls.facts import PROXIED_BY_KEY, TLS_PEER_KEY
from ..tls.peer import PeerIdentity
from ..wsgitypes import WSGIApp
from .authz import Decision, Policy, compile_entry, compile_policy
from .forwarded import (
    XFCC_HEADER,
    ForwardedCertError,
    ForwardedCertReader,
    ServerCertError,
    ServerCertReader,
    TrustedProxies,
)
from .paths import PathError, judge_path

__all__ = ["CLIENT_CERT_SOURCES", "IDENTITY_HEADER_PREFIXES", "PEER_KEY",
           "IdentityMiddleware", "filter_factory"]

PEER_KEY = "securewsgi.peer"
CLIENT_CERT_SOURCES = ("none", "server")

# Request headers that look like identity, as environ keys (a server maps "-" and "_"
# in a header name both to "_", so one prefix covers both spellings). Front ends set
# headers like these for the app behind them, and an app written for such a front end
# reads them; a client talking to us directly must not be able to send them.
IDENTITY_HEADER_PREFIXES = (
    "HTTP_X_SSL_CLIENT",                  # X-SSL-Client-* (nginx, HAProxy examples)
    "HTTP_SSL_CLIENT",                    # SSL-Client-*: mod_ssl names sent as headers
    "HTTP_X_CLIENT_CERT",                 # X-Client-Cert* (Google Cloud LB, ...)
    "HTTP_X_FORWARDED_CLIENT_CERT",       # Envoy XFCC
    "HTTP_X_FORWARDED_TLS_CLIENT_CERT",   # Traefik passTLSClientCert
    "HTTP_X_AMZN_MTLS_CLIENTCERT",        # AWS ALB mutual TLS
    "HTTP_X_SSL_CERT",                    # a common nginx/HAProxy name
    "HTTP_X_CLIENT_VERIFY",
    "HTTP_X_CLIENT_DN",
    "HTTP_REMOTE_USER",                   # Remote-User*
    "HTTP_X_REMOTE_USER",                 # X-Remote-User*
)
_PLANTED_PREFIXES = ("SSL_CLIENT_",)
_LOG_LIMIT = 300  # characters of a request value quoted in a log line

log = logging.getLogger("securewsgi.identity")
authz_log = logging.getLogger("securewsgi.authz")

_FORBIDDEN = b"403 Forbidden: access to this resource is not allowed\n"
_BAD_PATH = b"400 Bad Request: ambiguous request path\n"
_BAD_FORWARDED = b"400 Bad Request: unusable forwarded client certificate\n"
_BAD_SERVER_CERT = b"400 Bad Request: unusable client certificate from the hosting server\n"


def _refuse(start_response: Callable, status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body)))])
    return [body]


class IdentityMiddleware:
    """Puts the verified client certificate into environ and enforces allow-rules.

    ``rules`` is a sequence of `RuleConfig` or of plain dicts shaped as in YAML
    (``{"name": ..., "paths": [...], "methods": [...], "allow": [{"cn": ...}]}``).
    ``strip_identity_headers`` (default true) removes request headers that look like
    identity unless a trusted proxy sent them. ``client_cert_from`` is "none" (only
    securewsgi's own handshake, or a trusted proxy, identifies a client) or "server"
    (under another server: its verified ``SSL_CLIENT_CERT`` is the identity).
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
        strip_identity_headers: Union[bool, str] = True,
        client_cert_from: str = "none",
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
            _policy = compile_policy(_config.read_rules(source, rules, "rules"),
                                     default, source, "rules")
        self.policy = _policy
        self.trusted_proxies = TrustedProxies(proxies)
        self.proxy_identities = _proxy_identities(source, trusted_proxy_identities)
        self.forwarded = ForwardedCertReader(header)
        self._header_key = self.forwarded.environ_key
        self.strip_identity_headers: bool = _option(
            source, "strip_identity_headers", strip_identity_headers, _config.parse_bool)
        self.client_cert_from: str = _option(source, "client_cert_from", client_cert_from,
                                             _config.one_of(*CLIENT_CERT_SOURCES))
        self.server_certs = ServerCertReader() if self.client_cert_from == "server" else None
        self._scrub_prefixes = _scrub_prefixes(self.strip_identity_headers)
        self._warned_no_tls = False
        self._warned_own_tls = False
        self._days_text: dict[int, tuple[PeerIdentity, float, str]] = {}

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
                   strip_identity_headers=identity.strip_identity_headers,
                   client_cert_from=identity.client_cert_from,
                   _source=source, _policy=policy)

    # ------------------------------------------------------------------ per request

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        # An environ that securewsgi's own protocol built (it carries TLS_PEER_KEY, and
        # no identity layer ran yet) holds no SSL_CLIENT_* keys: the client's headers
        # all arrive as HTTP_*, so only those need looking at.
        built_by_us = TLS_PEER_KEY in environ and PEER_KEY not in environ

        # 1. the peer the connection's TLS handshake verified (read before step 2
        # removes the hosting server's SSL_CLIENT_* keys)
        try:
            peer = self._connection_peer(environ)
        except ServerCertError as exc:
            self._scrub(environ, built_by_us, trusted=False)
            environ[PEER_KEY] = None
            log.error("refused request: client_cert_from = server, but the hosting "
                      "server's certificate cannot be used: %s", exc)
            return _refuse(start_response, "400 Bad Request", _BAD_SERVER_CERT)
        trusted = self._trusts_forwarder(environ, peer)

        # 2. nothing under our names survives unless we put it there
        self._scrub(environ, built_by_us, trusted)
        header = environ.pop(self._header_key, None)

        # 3. the effective peer
        if trusted:
            # A trusted proxy speaks for its client: the proxy's own certificate is not
            # the caller's identity, and no forwarded certificate means anonymous.
            try:
                peer = self.forwarded.peer(header) if header else None
            except ForwardedCertError as exc:
                log.warning("refused forwarded client certificate from trusted proxy %s: %s",
                            environ.get("REMOTE_ADDR"), exc)
                environ[PEER_KEY] = None
                return _refuse(start_response, "400 Bad Request", _BAD_FORWARDED)

        # 4. what the application sees
        environ[PEER_KEY] = peer
        if peer is None:
            environ["SSL_CLIENT_VERIFY"] = "NONE"
        else:
            environ.update(peer.environ())
            # the cached keys are per certificate; the days left change with the clock
            environ["SSL_CLIENT_V_REMAIN"] = self._days_left(peer)
            if self.remote_user != "none":
                user = self._remote_user(peer)
                if user:
                    environ["REMOTE_USER"] = user

        # 5. authorization
        if self.policy.active:
            try:
                path = judge_path(environ)
            except PathError as exc:
                authz_log.info("refused ambiguous path %s: %s",
                               printable(environ.get("RAW_PATH_INFO")
                                         or environ.get("PATH_INFO", ""), _LOG_LIMIT),
                               exc.reason)
                return _refuse(start_response, "400 Bad Request", _BAD_PATH)
            method = environ.get("REQUEST_METHOD") or "GET"
            decision = self.policy.decide(path, method, peer)
            if not decision.allowed:
                self._log_denied(decision, method, path, peer)
                return _refuse(start_response, "403 Forbidden", _FORBIDDEN)
        return self.app(environ, start_response)

    def _days_left(self, peer: PeerIdentity) -> str:
        """Whole days until the certificate expires, as mod_ssl's SSL_CLIENT_V_REMAIN;
        worked out once per certificate and day (the text holds until `until`)."""
        now = time.time()
        known = self._days_text.get(id(peer))
        if known is not None and known[0] is peer and now <= known[1]:
            return known[2]
        not_after = peer.not_after.timestamp()
        days = int((not_after - now) // 86400)
        until = not_after - days * 86400 if days > 0 else math.inf
        if len(self._days_text) >= 4096:
            self._days_text.clear()
        # the peer is held, so its id is not reused while the entry lives
        self._days_text[id(peer)] = (peer, until, str(max(0, days)))
        return self._days_text[id(peer)][2]

    def _connection_peer(self, environ: dict[str, Any]) -> Optional[PeerIdentity]:
        """Who the TLS handshake in front of this middleware verified, or None.

        Under securewsgi's server that is its own handshake's peer, whatever
        `client_cert_from` says: that server verified the certificate itself, and the
        SSL_CLIENT_* keys an outer identity layer set are copies, not a second opinion.
        Under another server it is that server's verified certificate with
        ``client_cert_from = server``, and nobody (anonymous) without.
        """
        try:
            peer: Optional[PeerIdentity] = environ[TLS_PEER_KEY]
        except KeyError:
            if self.server_certs is not None:
                return self._server_peer(environ)
            if not self._warned_no_tls:
                self._warned_no_tls = True
                log.warning(
                    "environ has no %r: not running under securewsgi's server, so direct "
                    "clients are anonymous%s; set client_cert_from = server to use the "
                    "certificate a hosting server (Apache mod_ssl, nginx) verified",
                    TLS_PEER_KEY,
                    " (certificates forwarded by trusted proxies are still used)"
                    if self.trusted_proxies else "")
            return None
        if self.server_certs is not None and not self._warned_own_tls:
            self._warned_own_tls = True
            log.error("client_cert_from = server, but this request came through "
                      "securewsgi's own server, which verified the client certificate "
                      "itself: using that certificate and ignoring SSL_CLIENT_CERT (set "
                      "client_cert_from = none here; 'server' is for other servers)")
        return peer

    def _server_peer(self, environ: dict[str, Any]) -> Optional[PeerIdentity]:
        """The hosting server's verified certificate (``client_cert_from = server``).

        Only ``SSL_CLIENT_VERIFY == "SUCCESS"`` counts: mod_ssl's ``GENEROUS`` and
        nginx's ``FAILED:reason`` describe a certificate nobody verified, and ``NONE``
        means there was none. `ServerCertError` when the verified one is unusable.
        """
        if environ.get("SSL_CLIENT_VERIFY") != "SUCCESS":
            return None
        assert self.server_certs is not None
        return self.server_certs.peer(environ.get("SSL_CLIENT_CERT"))

    def _scrub(self, environ: dict[str, Any], built_by_us: bool, trusted: bool) -> None:
        """Remove keys planted under our names and, from an untrusted peer,
        identity-looking request headers, in one pass over the keys."""
        doomed = self._scrub_prefixes[(not built_by_us, not trusted)].keys_in(environ)
        if doomed:
            for key in doomed:
                del environ[key]
            if log.isEnabledFor(logging.DEBUG):
                headers = [key for key in doomed if key.startswith("HTTP_")]
                if headers:
                    log.debug("removed identity-looking request headers from %s: %s",
                              printable(str(environ.get("REMOTE_ADDR")), _LOG_LIMIT),
                              printable(" ".join(headers), _LOG_LIMIT))
        environ.pop("REMOTE_USER", None)

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
            # the proxy's own certificate, as a TLS handshake verified it (ours, or the
            # hosting server's with client_cert_from = server)
            return tls_peer is not None and tls_peer.source in ("tls", "server") and any(
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
        metrics.recorder.denied(decision.rule)  # a no-op unless securewsgi-run counts
        client = "anonymous" if peer is None else f"{peer.subject} (via {peer.source})"
        authz_log.warning("denied by rule %s: %s %s client=%s", decision.rule,
                          printable(method, 20), printable(path, _LOG_LIMIT),
                          printable(client, _LOG_LIMIT))


# ------------------------------------------------------------------ environ scrubbing


class _KeyPrefixes:
    """Finds the environ keys that start with any of some prefixes.

    Nearly every request has none, so that answer must be cheap: one C-level join of
    the keys and one precompiled regular expression (about a third of the cost of a
    `str.startswith` call per key). Only when it finds one does a pass over the keys
    collect them.
    """

    __slots__ = ("_probe", "prefixes")

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self.prefixes = prefixes
        headers = [re.escape(p[5:]) for p in prefixes if p.startswith("HTTP_")]
        others = [re.escape(p) for p in prefixes if not p.startswith("HTTP_")]
        branches = ([f"HTTP_(?:{'|'.join(headers)})"] if headers else []) + others
        # every key follows a NUL in the joined string; HTTP headers cannot hold a NUL,
        # and a false alarm only costs the exact pass
        self._probe = re.compile(f"\0(?:{'|'.join(branches)})").search if branches else None

    def keys_in(self, environ: dict[str, Any]) -> list[str]:
        if self._probe is None:
            return []
        try:
            joined = "\0" + "\0".join(environ)
        except TypeError:  # a non-str key, against PEP 3333, from an earlier layer
            return [k for k in environ if isinstance(k, str) and k.startswith(self.prefixes)]
        if self._probe(joined) is None:
            return []
        return [k for k in environ if k.startswith(self.prefixes)]


def _scrub_prefixes(strip_headers: bool) -> dict[tuple[bool, bool], _KeyPrefixes]:
    """(scan for planted SSL_CLIENT_* keys?, untrusted peer?) -> the keys to remove.

    Precomputed per middleware: a request pays for one probe of its keys, and for
    nothing when there is nothing to look for.
    """
    headers = IDENTITY_HEADER_PREFIXES if strip_headers else ()
    return {
        (True, True): _KeyPrefixes(_PLANTED_PREFIXES + headers),
        (True, False): _KeyPrefixes(_PLANTED_PREFIXES),
        (False, True): _KeyPrefixes(headers),
        (False, False): _KeyPrefixes(()),
    }


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


# -------------------------------------------------------------------- Paste Deploy

_PASTE_OPTIONS = ("remote_user", "trusted_proxies", "forwarded_cert_header", "default",
                  "policy_file", "strip_identity_headers", "client_cert_from")


def filter_factory(global_conf: Mapping[str, Any], **local_conf: Any
                   ) -> Callable[[WSGIApp], IdentityMiddleware]:
    """Paste Deploy ``paste.filter_factory`` (``use = egg:securewsgi#identity``).

    Options: ``remote_user``, ``trusted_proxies`` (space separated CIDRs),
    ``forwarded_cert_header``, ``strip_identity_headers`` (default true),
    ``client_cert_from`` (``none`` or ``server``: under Apache mod_wsgi or uWSGI behind
    nginx, the certificate that server verified), ``default`` and ``policy_file`` (YAML
    with ``rules:`` and optionally ``default:``, relative to the Paste file's
    directory). Everything is validated here, when the pipeline is loaded, not on the
    first request.
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
        strip_identity_headers=str(local_conf.get("strip_identity_headers", "true")),
        client_cert_from=str(local_conf.get("client_cert_from", "none")).strip(),
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
        raise ConfigError(path, None, _config.yaml_error_text(exc)) from None
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
