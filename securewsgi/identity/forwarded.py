"""Client certificates forwarded by a trusted TLS-terminating proxy.

Two header formats are understood:

* ``x-forwarded-client-cert`` (the default name) is Envoy's XFCC header: a comma
  separated list of *elements*, each a ``;`` separated list of ``Key=value`` pairs
  (values containing ``,;=`` are double-quoted, ``\\"`` escapes a quote). The client
  certificate is the URL-encoded PEM in the ``Cert`` key. Envoy *appends* an element per
  hop (``forward_client_cert_details: APPEND_FORWARD``), so the **last** element is the
  one written by the proxy that talks to us, about the client *it* verified. That is
  the only element a trusted proxy vouches for: earlier elements were written by
  proxies further out -- or by the client itself, if an edge proxy appends to a header
  it did not sanitise. securewsgi therefore uses the last element. If that element has
  a ``Hash`` key it must equal the SHA-256 of the certificate.
* any other header name carries one URL-encoded PEM certificate, as nginx sends it with
  ``proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;``.

An empty header value means "no client certificate" (anonymous). Anything else that
cannot be read raises `ForwardedCertError` (the middleware answers 400).

`ServerCertReader` reads the other hand-over: not a header but the environ key
``SSL_CLIENT_CERT`` that the server hosting the middleware (Apache mod_ssl with
``+ExportCertData``, nginx via ``uwsgi_param SSL_CLIENT_CERT $ssl_client_escaped_cert``)
sets after verifying the client itself.
"""
from __future__ import annotations

import functools
import hmac
import ipaddress
import urllib.parse
from collections.abc import Iterable
from typing import Optional, Union

from ..errors import SecureWSGIError
from ..tls.peer import CertificateParseError, PeerIdentity

__all__ = [
    "XFCC_HEADER",
    "ForwardedCertError",
    "ForwardedCertReader",
    "ServerCertError",
    "ServerCertReader",
    "TrustedProxies",
    "environ_key",
    "parse_xfcc",
]

XFCC_HEADER = "x-forwarded-client-cert"
MAX_HEADER_LENGTH = 64 * 1024
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class ForwardedCertError(SecureWSGIError, ValueError):
    """A trusted proxy sent a forwarded-certificate header that cannot be used."""


def environ_key(header: str) -> str:
    """``x-forwarded-client-cert`` -> ``HTTP_X_FORWARDED_CLIENT_CERT``."""
    return "HTTP_" + header.upper().replace("-", "_")


# ------------------------------------------------------------------ trusted proxies


class TrustedProxies:
    """A set of networks; ``address in proxies`` for a REMOTE_ADDR string.

    IPv4-mapped IPv6 addresses (``::ffff:10.0.0.1``, what a dual-stack listener reports
    for IPv4 clients) match the IPv4 networks too. Answers are cached per address.
    """

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks: tuple[Network, ...] = tuple(networks)
        self._v4 = tuple(n for n in self.networks if n.version == 4)
        self._v6 = tuple(n for n in self.networks if n.version == 6)
        self.contains = functools.lru_cache(maxsize=1024)(self._contains)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and self.contains(address)

    def _contains(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            return False  # a UNIX socket path, a host name: never a trusted proxy
        if ip.version == 6:
            mapped = ip.ipv4_mapped  # type: ignore[union-attr]
            if mapped is not None and any(mapped in n for n in self._v4):
                return True
            if getattr(ip, "scope_id", None):
                ip = ipaddress.IPv6Address(address.strip("[]").split("%", 1)[0])
            return any(ip in n for n in self._v6)
        return any(ip in n for n in self._v4)


# ------------------------------------------------------------------------ XFCC


def parse_xfcc(value: str) -> list[list[tuple[str, str]]]:
    """Split an XFCC value into elements of (lower-cased key, unquoted value) pairs."""
    elements: list[list[tuple[str, str]]] = []
    pairs: list[tuple[str, str]] = []
    token: list[str] = []
    key: Optional[str] = None
    quoted = False  # inside "..."
    was_quoted = False  # the current value was a quoted string (nothing may follow it)
    i, n = 0, len(value)

    def end_pair() -> None:
        nonlocal key, was_quoted
        text = "".join(token)
        token.clear()
        if key is None:
            raise ForwardedCertError(f"XFCC pair without '=': {text[:40]!r}")
        if not key:
            raise ForwardedCertError("XFCC pair with an empty key")
        pairs.append((key, text))
        key = None
        was_quoted = False

    while i < n:
        char = value[i]
        if quoted:
            if char == "\\" and i + 1 < n:
                token.append(value[i + 1])
                i += 2
                continue
            if char == '"':
                quoted = False
                was_quoted = True
            else:
                token.append(char)
        elif was_quoted and char not in ",;":
            if not char.isspace():
                raise ForwardedCertError("XFCC text after a quoted value")
        elif char == '"':
            if token or key is None:
                raise ForwardedCertError("XFCC quote in the middle of a value")
            quoted = True
        elif char == "=" and key is None:
            key = "".join(token).strip().lower()
            token.clear()
        elif char == ";":
            end_pair()
        elif char == ",":
            end_pair()
            elements.append(pairs)
            pairs = []
        else:
            token.append(char)
        i += 1
    if quoted:
        raise ForwardedCertError("XFCC value with an unterminated quote")
    end_pair()
    elements.append(pairs)
    return elements


def _xfcc_certificate(value: str) -> tuple[str, Optional[str]]:
    """The URL-encoded ``Cert`` and the ``Hash`` of the last XFCC element."""
    element = parse_xfcc(value)[-1]
    certs = [v for k, v in element if k == "cert"]
    hashes = [v for k, v in element if k == "hash"]
    if not certs:
        raise ForwardedCertError(
            "XFCC element without Cert= (configure the proxy to forward the certificate,"
            " e.g. Envoy set_current_client_cert_details: {cert: true})"
        )
    if len(certs) > 1 or len(hashes) > 1:
        raise ForwardedCertError("XFCC element with a repeated Cert or Hash")
    return certs[0], hashes[0] if hashes else None


# ------------------------------------------------------------------------ reader


_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
_PEM_END = "-----END CERTIFICATE-----"


def _pem_bytes(encoded: str) -> bytes:
    try:
        pem = urllib.parse.unquote(encoded.strip(), errors="strict")
    except UnicodeDecodeError:
        raise ForwardedCertError("forwarded certificate is not URL-encoded text") from None
    pem = pem.strip()
    if not pem.isascii():
        raise ForwardedCertError("forwarded certificate is not ASCII PEM")
    # exactly one PEM block and nothing around it (cryptography would skip junk)
    if not (pem.startswith(_PEM_BEGIN) and pem.endswith(_PEM_END)
            and pem.count("-----BEGIN") == 1):
        raise ForwardedCertError("forwarded value is not one URL-encoded PEM certificate")
    return pem.encode("ascii")


class ForwardedCertReader:
    """Turns one header value into a `PeerIdentity` (source "proxy"), or None.

    The same certificate arrives on every request of the same client, so results are
    cached by header value: a certificate is parsed once, not per request.
    """

    def __init__(self, header: str = XFCC_HEADER, cache_size: int = 256) -> None:
        self.header = header.lower()
        self.environ_key = environ_key(self.header)
        self.xfcc = self.header == XFCC_HEADER
        self._cached = functools.lru_cache(maxsize=cache_size)(self._read)

    def peer(self, value: str) -> Optional[PeerIdentity]:
        """The forwarded peer, None for an empty value; `ForwardedCertError` if unusable."""
        if not value or value.isspace():
            return None
        if len(value) > MAX_HEADER_LENGTH:
            raise ForwardedCertError("forwarded certificate header is too long")
        return self._cached(value)

    def _read(self, value: str) -> PeerIdentity:
        expected_hash: Optional[str] = None
        if self.xfcc:
            encoded, expected_hash = _xfcc_certificate(value)
        else:
            encoded = value
        pem = _pem_bytes(encoded)
        try:
            peer = PeerIdentity.from_pem(pem, source="proxy")
        except (CertificateParseError, ValueError) as exc:
            raise ForwardedCertError(f"forwarded certificate cannot be read: {exc}") from None
        if expected_hash is not None and not hmac.compare_digest(
            expected_hash.strip().lower().encode("ascii", "replace"),
            peer.fingerprint_sha256.encode("ascii"),
        ):
            raise ForwardedCertError("XFCC Hash does not match the forwarded certificate")
        return peer

    def cache_info(self) -> dict[str, int]:
        info = self._cached.cache_info()
        return {"hits": info.hits, "misses": info.misses, "size": info.currsize}


# --------------------------------------------------------- the hosting server's certificate

_MISSING_SERVER_CERT = (
    "SSL_CLIENT_VERIFY is SUCCESS but SSL_CLIENT_CERT is missing: export it (Apache: "
    "SSLOptions +StdEnvVars +ExportCertData; nginx: uwsgi_param SSL_CLIENT_CERT "
    "$ssl_client_escaped_cert)")


class ServerCertError(SecureWSGIError, ValueError):
    """The hosting server verified a client but its ``SSL_CLIENT_CERT`` is unusable: a
    server misconfiguration (the middleware answers 400 and logs why)."""


def _server_pem(value: str) -> bytes:
    """One PEM certificate from ``SSL_CLIENT_CERT``: plain PEM (mod_ssl, nginx's
    ``$ssl_client_raw_cert``), URL-escaped PEM (``$ssl_client_escaped_cert``) or PEM
    with tab-indented lines (``$ssl_client_cert``)."""
    text = value.strip()
    if "%" in text:  # base64 and the PEM armour never hold "%": this is URL-escaped
        try:
            text = urllib.parse.unquote(text, errors="strict").strip()
        except UnicodeDecodeError:
            raise ServerCertError("SSL_CLIENT_CERT is not URL-escaped text") from None
    if not text.isascii():
        raise ServerCertError("SSL_CLIENT_CERT is not ASCII PEM")
    if not (text.startswith(_PEM_BEGIN) and text.endswith(_PEM_END)
            and text.count("-----BEGIN") == 1):
        raise ServerCertError("SSL_CLIENT_CERT is not one PEM certificate "
                              "(plain or URL-escaped)")
    return text.encode("ascii")


class ServerCertReader:
    """Turns the hosting server's ``SSL_CLIENT_CERT`` into a `PeerIdentity` (source
    "server").

    The caller checks ``SSL_CLIENT_VERIFY == "SUCCESS"`` first: the value is trusted
    because the hosting server verified it, and no request header can set an environ
    key without the ``HTTP_`` prefix. Outcomes are cached per value, failures too: a
    misconfigured server sends the same unusable value on every request.
    """

    def __init__(self, cache_size: int = 256) -> None:
        self._cached = functools.lru_cache(maxsize=cache_size)(self._read)

    def peer(self, value: object) -> PeerIdentity:
        """The verified peer; `ServerCertError` when the value cannot be used."""
        if not isinstance(value, str) or not value.strip():
            raise ServerCertError(_MISSING_SERVER_CERT)
        if len(value) > MAX_HEADER_LENGTH:
            raise ServerCertError("SSL_CLIENT_CERT is too long")
        result = self._cached(value)
        if isinstance(result, str):  # the cached reason (a fresh exception each time:
            raise ServerCertError(result)  # re-raising one instance grows its traceback)
        return result

    @staticmethod
    def _read(value: str) -> Union[PeerIdentity, str]:
        """The peer, or the reason it cannot be read."""
        try:
            return PeerIdentity.from_pem(_server_pem(value), source="server")
        except ServerCertError as exc:
            return str(exc)
        except (CertificateParseError, ValueError) as exc:
            return f"SSL_CLIENT_CERT cannot be read: {exc}"

    def cache_info(self) -> dict[str, int]:
        info = self._cached.cache_info()
        return {"hits": info.hits, "misses": info.misses, "size": info.currsize}
