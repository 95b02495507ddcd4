"""What `securewsgi-check` finds out about a TLS endpoint, step by step, in plain words.

A `requests` error collapses a dozen different mistakes into "SSLError: Max retries
exceeded". This module uses the stdlib `ssl` module directly so that each step (DNS,
TCP connect, TLS handshake, certificate verification, client certificate, HTTP) can be
seen and named, and each failure gets one sentence of cause and one of fix.

How it sees what Python does not expose:

* The server's whole certificate chain, whether it asked for a client certificate and
  which CA names it sent come from the TLS messages themselves, through
  ``SSLContext._msg_callback`` (a CPython debugging hook, present since 3.8). So the
  chain is known even when verification fails. Without the hook (another Python),
  those facts are reported as unknown and the chain shrinks to the leaf.
* When the server certificate fails verification, a second, non-verifying handshake
  fills in protocol, cipher and the client-certificate request. Nothing is sent over
  that unverified connection.
* With TLS 1.3 the server judges the client certificate *after* the client considers
  the handshake finished; a refusal then arrives as an alert on the first read (or as
  a reset/EOF). That is why the HTTP step classifies those errors too. The request is
  sent at once (a response proves the certificate was accepted); only when the
  connection then ends without an alert, a second handshake waits for the server's
  verdict before writing anything, so the alert cannot be lost to a reset.
"""
from __future__ import annotations

import contextlib
import datetime
import ipaddress
import re
import select
import socket
import ssl
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .. import __version__
from ..errors import SecureWSGIError
from ..tls.context import CertificateInfo, ca_files, pem_certificates
from ..tls.pemkeys import load_private_key
from ..tls.refusals import authority_key_id, short_fingerprint, subject_key_id
from ..tls.validity import expires
from .sessions import ClientConfigError, ClientSettings, settings_context

__all__ = ["JSON_KEYS", "CertificateFacts", "Diagnosis", "UsageError", "diagnose",
           "hostname_matches"]

DEFAULT_TIMEOUT = 10.0
EXPIRY_NOTE_DAYS = 30
MAX_RESPONSE_HEAD = 64 * 1024
VERDICT_WAIT = 2.0  # most a TLS 1.3 server without session tickets costs us (seconds)
TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
#: How errors name the client settings: by the securewsgi-check flags that set them.
FLAGS = {"ca_certs": "--ca", "certfile": "--cert", "keyfile": "--key",
         "key_password": "--key-password"}

# OpenSSL X509_V_ERR_* codes (stable across versions, unlike the messages).
_UNKNOWN_CA_CODES = {2, 18, 19, 20, 21}
_EXPIRED, _NOT_YET_VALID, _INVALID_PURPOSE = 10, 9, 26
_HOSTNAME_MISMATCH, _IP_MISMATCH = 62, 64

# TLS alerts the server sends when it refuses the client certificate.
_REFUSAL_REASONS = {
    "TLSV1_ALERT_UNKNOWN_CA": (
        "it is not signed by a CA the server trusts (TLS alert: unknown CA)",
        "use a certificate issued by a CA in the server's tls.ca_certs, or add its CA there."),
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": (
        "it has expired (TLS alert: certificate expired)",
        "issue a new client certificate."),
    "SSLV3_ALERT_CERTIFICATE_REVOKED": (
        "it has been revoked (TLS alert: certificate revoked)",
        "issue a new client certificate; this one is on the server's CRL."),
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": (
        "it is not meant for client authentication: its extended key usage lacks "
        "clientAuth (TLS alert: unsupported certificate)",
        "issue a client certificate with the clientAuth extended key usage "
        "(securewsgi-certs issue does)."),
    "SSLV3_ALERT_BAD_CERTIFICATE": (
        "the server found it unacceptable (TLS alert: bad certificate)",
        "check the client certificate's validity dates and extensions; the server's log "
        "names the reason."),
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": (
        "the server could not accept it (TLS alert: certificate unknown)",
        "the server's log names the reason."),
    "TLSV1_ALERT_ACCESS_DENIED": (
        "the server denied access (TLS alert: access denied)",
        "the server's log names the reason."),
    "TLSV1_ALERT_DECRYPT_ERROR": (
        "the server could not verify the client's signature (TLS alert: decrypt error)",
        "check that the key belongs to the certificate."),
}
_REQUIRED_ALERT = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
_VERSION_REASONS = {"TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL",
                    "NO_PROTOCOLS_AVAILABLE", "WRONG_SSL_VERSION",
                    "TLSV1_ALERT_INAPPROPRIATE_FALLBACK", "VERSION_TOO_LOW",
                    "VERSION_TOO_HIGH"}
_CIPHER_REASONS = {"NO_SHARED_CIPHER", "NO_CIPHERS_AVAILABLE", "NO_SUITABLE_SIGNATURE_ALGORITHM",
                   "NO_SHARED_SIGNATURE_ALGORITHMS", "NO_SUITABLE_KEY_SHARE"}
_EOF_REASONS = {"UNEXPECTED_EOF_WHILE_READING", "EOF"}


class UsageError(SecureWSGIError, ValueError):
    """The command line cannot be acted on (bad URL, unusable file): exit status 2."""


# ------------------------------------------------------------------------ the result


@dataclass
class CertificateFacts:
    """One certificate of the server's chain, as the report shows it."""

    subject: str
    issuer: str
    sans: list[str]
    not_before: str
    not_after: str
    days_left: int
    sha256: str

    @classmethod
    def from_der(cls, der: bytes, now: datetime.datetime) -> CertificateFacts:
        cert = x509.load_der_x509_certificate(der)
        info = CertificateInfo.from_x509(cert)
        return cls(
            subject=info.subject, issuer=info.issuer, sans=list(info.sans),
            not_before=_iso(info.not_before), not_after=_iso(info.not_after),
            days_left=info.days_left(now), sha256=cert.fingerprint(hashes.SHA256()).hex(),
        )


@dataclass
class Diagnosis:
    """Everything one check found; `to_json()` gives the stable JSON form."""

    url: str
    host: str
    port: int
    path: str
    ca: str  # the CA file/directory used, or "system"
    tls_version: Optional[str] = None  # the one version offered (--tls-version), if any
    address: Optional[str] = None  # the IP address connected to
    tcp_connected: bool = False
    handshake_completed: bool = False
    protocol: Optional[str] = None
    cipher: Optional[str] = None
    chain: list[CertificateFacts] = field(default_factory=list)
    trusted: Optional[bool] = None
    verify_error: Optional[str] = None
    hostname_match: Optional[bool] = None
    client_cert_requested: Optional[bool] = None
    client_ca_names: Optional[list[str]] = None
    client_cert_sent: bool = False
    client_cert_subject: Optional[str] = None
    client_cert_not_before: Optional[str] = None
    client_cert_not_after: Optional[str] = None
    client_cert_accepted: Optional[bool] = None
    http_status: Optional[int] = None
    http_reason: Optional[str] = None
    problem: Optional[str] = None
    explanation: Optional[str] = None
    fix: Optional[str] = None
    detail: Optional[str] = None
    notes: list[str] = field(default_factory=list)
    client_cert_file: Optional[str] = None  # --cert (not part of the JSON form)

    @property
    def ok(self) -> bool:
        return self.problem is None and self.http_status is not None

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def fail(self, problem: str, explanation: str, fix: str,
             detail: Optional[str] = None) -> Diagnosis:
        """Record the first (root) problem; later ones would only be consequences."""
        if self.problem is None:
            self.problem, self.explanation, self.fix = problem, explanation, fix
            self.detail = detail
        return self

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["exit_code"] = self.exit_code
        return {key: data[key] for key in JSON_KEYS}


#: The keys of ``securewsgi-check --json``, in output order (documented in
#: docs/source/clients.rst, section "Checking a connection").
JSON_KEYS = (
    "url", "ok", "exit_code", "problem", "explanation", "fix", "detail",
    "host", "port", "path", "address", "ca", "tls_version", "tcp_connected", "handshake_completed",
    "protocol",
    "cipher", "chain", "trusted", "verify_error", "hostname_match",
    "client_cert_requested", "client_ca_names", "client_cert_sent", "client_cert_subject",
    "client_cert_not_before", "client_cert_not_after", "client_cert_accepted",
    "http_status", "http_reason", "notes",
)


# ---------------------------------------------------------- TLS message inspection


class _Reader:
    """Reads the length-prefixed vectors TLS messages are made of."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def number(self, size: int) -> int:
        if self.remaining < size:
            raise ValueError("truncated TLS message")
        value = int.from_bytes(self.data[self.pos:self.pos + size], "big")
        self.pos += size
        return value

    def vector(self, length_size: int) -> bytes:
        length = self.number(length_size)
        if self.remaining < length:
            raise ValueError("truncated TLS message")
        value = self.data[self.pos:self.pos + length]
        self.pos += length
        return value


class _HandshakeRecorder:
    """``SSLContext._msg_callback`` target: keeps what the server said in the handshake.

    It must never raise (an exception would surface later, in the middle of the
    handshake), so every parse error just leaves a fact unknown.
    """

    available = hasattr(ssl.SSLContext, "_msg_callback")

    def __init__(self) -> None:
        self.first_record: Optional[bytes] = None
        self.server_hello = False
        self.tls13 = False
        self.cipher_id: Optional[int] = None
        self.server_done = False  # TLS 1.2 ServerHelloDone: the request would have come
        self.client_flight = False  # we answered the server: its certificate passed
        self.server_chain: list[bytes] = []
        self.cert_requested = False
        self.ca_names: list[str] = []
        self.client_cert_sent: Optional[bool] = None

    @property
    def request_known(self) -> bool:
        """Has the handshake gone far enough to know whether a certificate was asked for?
        TLS 1.3 sends CertificateRequest before the server certificate, TLS 1.2 after."""
        return self.cert_requested or self.server_done or (self.tls13 and bool(
            self.server_chain))

    def install(self, context: ssl.SSLContext) -> None:
        if self.available:
            context._msg_callback = self  # type: ignore[attr-defined]

    def __call__(self, _conn: Any, direction: str, version: Any, content_type: Any,
                 msg_type: Any, data: bytes) -> None:
        with contextlib.suppress(Exception):  # see the class docstring
            self._record(direction, int(version), int(content_type), int(msg_type), data)

    def _record(self, direction: str, version: int, content_type: int, msg_type: int,
                data: bytes) -> None:
        if content_type == 256:  # a record header
            if direction == "read" and self.first_record is None:
                self.first_record = bytes(data[:5])
            return
        if content_type != 22:  # only handshake messages from here on
            return
        tls13 = version == ssl.TLSVersion.TLSv1_3
        body = data[4:]  # skip the handshake header (type, 24-bit length)
        if direction == "write":
            if msg_type == 11:
                self.client_cert_sent = bool(_certificate_list(body, tls13))
            # Certificate, ClientKeyExchange, CertificateVerify, Finished: all come after
            # this client verified the server's certificate and name.
            self.client_flight = self.client_flight or msg_type in (11, 15, 16, 20)
            return
        if msg_type == 2:
            self.server_hello, self.tls13 = True, tls13
            self.cipher_id = _server_hello_cipher(body)
        elif msg_type == 14:
            self.server_done = True
        elif msg_type == 11:
            self.server_chain = _certificate_list(body, tls13)
        elif msg_type == 13:
            self.cert_requested = True
            self.ca_names = [_name_to_string(n) for n in _requested_ca_names(body, tls13)]


def _server_hello_cipher(body: bytes) -> int:
    """The cipher suite a ServerHello chose (RFC 8446 4.1.3: same layout as 1.2)."""
    reader = _Reader(body)
    reader.number(2 + 32)  # legacy_version, random
    reader.vector(1)  # legacy_session_id_echo
    return reader.number(2)


def _cipher_name(context: ssl.SSLContext, cipher_id: Optional[int]) -> Optional[str]:
    if cipher_id is None:
        return None
    names = {c["id"] & 0xFFFF: c["name"] for c in context.get_ciphers()}
    return names.get(cipher_id, f"0x{cipher_id:04X}")


def _certificate_list(body: bytes, tls13: bool) -> list[bytes]:
    """DER certificates of a Certificate message (RFC 5246 7.4.2, RFC 8446 4.4.2)."""
    reader = _Reader(body)
    if tls13:
        reader.vector(1)  # certificate_request_context
    entries = _Reader(reader.vector(3))
    certs = []
    while entries.remaining:
        certs.append(entries.vector(3))
        if tls13:
            entries.vector(2)  # per-certificate extensions
    return certs


def _requested_ca_names(body: bytes, tls13: bool) -> list[bytes]:
    """DER names of a CertificateRequest (RFC 5246 7.4.4; RFC 8446 4.3.2 + 4.2.4)."""
    reader = _Reader(body)
    if tls13:
        reader.vector(1)  # certificate_request_context
        extensions = _Reader(reader.vector(2))
        while extensions.remaining:
            kind, value = extensions.number(2), extensions.vector(2)
            if kind == 47:  # certificate_authorities
                return _name_list(_Reader(value).vector(2))
        return []
    reader.vector(1)  # certificate_types
    reader.vector(2)  # supported_signature_algorithms
    return _name_list(reader.vector(2))


def _name_list(data: bytes) -> list[bytes]:
    names, reader = [], _Reader(data)
    while reader.remaining:
        names.append(reader.vector(2))
    return names


def _der_items(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(tag, content) of each DER element in ``data``."""
    pos = 0
    while pos < len(data):
        tag, length = data[pos], data[pos + 1]
        pos += 2
        if length & 0x80:
            size = length & 0x7F
            length = int.from_bytes(data[pos:pos + size], "big")
            pos += size
        yield tag, data[pos:pos + length]
        pos += length


def _oid(content: bytes) -> str:
    first, parts, value = content[0], [], 0
    parts += [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    for byte in content[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def _name_to_string(der: bytes) -> str:
    """A DER X.509 Name as an RFC 4514 string (cryptography parses no bare Name)."""
    try:
        ((_, rdn_sequence),) = list(_der_items(der))
        rdns = []
        for _, rdn in _der_items(rdn_sequence):
            attributes = []
            for _, pair in _der_items(rdn):
                (_, oid), (tag, value) = list(_der_items(pair))
                text = value.decode("utf-16-be" if tag == 0x1E else "utf-8", "replace")
                attributes.append(x509.NameAttribute(x509.ObjectIdentifier(_oid(oid)), text))
            rdns.append(x509.RelativeDistinguishedName(attributes))
        return x509.Name(rdns).rfc4514_string()
    except Exception:  # an odd name is shown raw rather than failing
        return f"(unparsed name {der.hex()})"


# ------------------------------------------------------------------------- helpers


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _date(iso: str) -> str:
    return iso[:10]


def parse_iso(iso: str) -> datetime.datetime:
    """The inverse of `_iso`."""
    return datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or ""


def _detail(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return re.sub(r"\s*\(_ssl\.c:\d+\)", "", text)


def hostname_matches(host: str, cert: x509.Certificate) -> bool:
    """Would a client that checks ``host`` accept ``cert``? (RFC 6125, as OpenSSL does:
    IP addresses only against IP SANs, one left-most ``*`` label, CN only without SANs.)"""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        return sans is not None and address in sans.get_values_for_type(x509.IPAddress)
    wanted = host.rstrip(".").lower()
    if sans is not None:
        names = sans.get_values_for_type(x509.DNSName)
    else:
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return any(_dns_match(wanted, str(name).rstrip(".").lower()) for name in names)


def _dns_match(host: str, pattern: str) -> bool:
    if not pattern.startswith("*."):
        return host == pattern
    head, _, rest = host.partition(".")
    return bool(head) and rest == pattern[2:] and rest.count(".") >= 1


# ---------------------------------------------------------------------- the target


_DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclass(frozen=True)
class _Target:
    url: str
    host: str
    port: int
    path: str
    scheme: str = "https"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def https_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}{self.path}"


def _parse_url(url: str) -> _Target:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise UsageError(f"{url}: securewsgi-check checks HTTPS; give an https:// URL "
                         "(or http:// to see what a port speaks)")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise UsageError(f"{url}: invalid port") from None
    if not parts.hostname:
        raise UsageError(f"{url}: no host in the URL")
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    return _Target(url, parts.hostname, port, path, scheme)


# ---------------------------------------------------------------------- the checks


@dataclass
class _Options:
    settings: ClientSettings
    timeout: float
    tls_version: Optional[str]

    def context(self, verify: bool = True) -> ssl.SSLContext:
        context = settings_context(self.settings)
        if not verify:  # only for the probe that learns facts; it carries no request
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.tls_version is not None:
            context.minimum_version = context.maximum_version = TLS_VERSIONS[self.tls_version]
        context.set_alpn_protocols(["http/1.1"])
        return context


def diagnose(
    url: str,
    *,
    ca: Union[str, Path, None] = None,
    certfile: Union[str, Path, None] = None,
    keyfile: Union[str, Path, None] = None,
    key_password: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
    tls_version: Optional[str] = None,
) -> Diagnosis:
    """Connect to ``url`` as a client and explain what happened.

    ``timeout`` bounds each network step (connect, handshake, response) separately.
    ``tls_version`` ("1.2" or "1.3") offers only that version. Raises `UsageError`
    for a URL or client file that cannot be used; network outcomes are in the result.
    """
    target = _parse_url(url)
    if not timeout > 0:
        raise UsageError(f"timeout must be > 0 seconds, got {timeout}")
    if tls_version is not None and tls_version not in TLS_VERSIONS:
        raise UsageError(f"TLS version must be one of {', '.join(TLS_VERSIONS)}")
    settings = ClientSettings(
        ca_certs=Path(ca) if ca is not None else None,
        certfile=Path(certfile) if certfile is not None else None,
        keyfile=Path(keyfile) if keyfile is not None else None,
        key_password=key_password,
        labels=FLAGS,
    )
    if settings.keyfile is not None and settings.certfile is None:
        raise UsageError("--key needs --cert")
    options = _Options(settings, float(timeout), tls_version)
    report = Diagnosis(url=url, host=target.host, port=target.port, path=target.path,
                       ca=str(settings.ca_certs) if settings.ca_certs else "system",
                       tls_version=tls_version)
    if _key_mismatch(settings):
        _note_client_certificate(report, settings)
        return _key_mismatch_failure(report, settings)
    try:
        options.context()  # every file is read and checked before the first packet
    except ClientConfigError as exc:
        raise UsageError(str(exc)) from None
    _note_client_certificate(report, settings)
    if target.scheme == "http":
        _check_plain(report, target, options)
        return report
    _check(report, target, options)
    _note_expiry(report)
    return report


def _key_mismatch(settings: ClientSettings) -> bool:
    """--cert and --key are readable but do not belong together? (Anything unreadable
    is left to the context, whose error names the file.)"""
    if settings.certfile is None or settings.keyfile is None:
        return False
    try:
        cert = x509.load_pem_x509_certificates(settings.certfile.read_bytes())[0]
        key = load_private_key(settings.keyfile.read_bytes(), settings.key_password)
    except (OSError, ValueError, IndexError):  # KeyLoadError is a ValueError
        return False
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki)


def _key_mismatch_failure(report: Diagnosis, settings: ClientSettings) -> Diagnosis:
    return report.fail(
        "client_key_mismatch",
        f"the private key {settings.keyfile} does not belong to the client certificate "
        f"{report.client_cert_subject} ({settings.certfile}), so no TLS client can use "
        "the pair and the server never sees this client.",
        f"pass the key that was issued with {settings.certfile} as --key (or the "
        f"certificate of {settings.keyfile} as --cert).",
        "key values mismatch")


def _check(report: Diagnosis, target: _Target, options: _Options) -> None:
    sock = _connect(report, target, options)
    if sock is None:
        return
    recorder = _HandshakeRecorder()
    context = options.context()
    recorder.install(context)
    try:
        tls = context.wrap_socket(sock, server_hostname=target.host)
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        _record_handshake(report, recorder, target)
        if recorder.server_hello:
            report.protocol = "TLSv1.3" if recorder.tls13 else "TLSv1.2"
            report.cipher = _cipher_name(context, recorder.cipher_id)
        if recorder.client_flight:
            report.trusted = report.hostname_match = True
        _handshake_failed(report, recorder, exc, target, options)
        if isinstance(exc, ssl.SSLCertVerificationError):
            _probe_without_verification(report, target, options)
        return
    with tls:
        report.handshake_completed = True
        report.protocol, report.cipher = tls.version(), (tls.cipher() or (None,))[0]
        report.trusted = report.hostname_match = True
        _record_handshake(report, recorder, target)
        if report.client_cert_requested and report.client_cert_sent \
                and report.protocol != "TLSv1.3":
            report.client_cert_accepted = True  # TLS 1.2: judged inside the handshake
        _exchange(report, tls, recorder, target, options)


# ---------------------------------------------------------------- an http:// URL


def _check_plain(report: Diagnosis, target: _Target, options: _Options) -> None:
    """An http:// URL: either plain HTTP works there, or the port speaks TLS and the
    URL must say https:// (say so, rather than refuse the URL)."""
    sock = _connect(report, target, options)
    if sock is None:
        return
    with sock:
        answer = _plain_exchange(sock, target, options)
    if _refuses_plain_http(answer) or (not answer.startswith(b"HTTP/")
                                       and _speaks_tls(target, options)):
        report.fail("tls_port",
                    "this port speaks TLS: use https://, not http:// (the server refused "
                    "the plain HTTP request).",
                    f"use {target.https_url}.", answer[:80].decode("latin-1") or "EOF")
        return
    if not answer.startswith(b"HTTP/"):
        report.fail("not_http",
                    f"the server answered plain HTTP with something that is not HTTP "
                    f"({answer[:40]!r}).", "check the URL's port and scheme.")
        return
    report.notes.append("plain HTTP: nothing on this connection is encrypted, and no "
                        "certificate is checked")
    _read_status(report, answer, target)


def _plain_exchange(sock: socket.socket, target: _Target, options: _Options) -> bytes:
    """GET over plain TCP; everything the server sent until it closed (bounded)."""
    answer = b""
    deadline = time.monotonic() + options.timeout
    try:
        sock.sendall(_request(target))
        while len(answer) < MAX_RESPONSE_HEAD:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = sock.recv(16384)
            if not chunk:
                break
            answer += chunk
    except OSError:  # a reset or a timeout: what arrived is the answer
        pass
    return answer


def _refuses_plain_http(answer: bytes) -> bool:
    """A TLS record (an alert), or a 400/497 that names HTTPS (securewsgi: "this port
    speaks HTTPS"; nginx: "The plain HTTP request was sent to HTTPS port")."""
    if answer[:1] in (b"\x15", b"\x16") and answer[1:2] == b"\x03":
        return True
    match = re.match(rb"HTTP/1\.[01] (400|497) ", answer)
    return match is not None and b"HTTPS" in answer.upper()


def _speaks_tls(target: _Target, options: _Options) -> bool:
    """Does a TLS ClientHello on this port get a ServerHello back?"""
    try:
        sock = socket.create_connection((target.host, target.port), timeout=options.timeout)
    except OSError:
        return False
    recorder = _HandshakeRecorder()
    context = options.context(verify=False)
    recorder.install(context)
    try:
        with context.wrap_socket(sock, server_hostname=target.host):
            return True
    except (OSError, ssl.SSLError):
        return recorder.server_hello
    finally:
        sock.close()


def _request(target: _Target) -> bytes:
    return (f"GET {target.path} HTTP/1.1\r\nHost: {target.host_header}\r\n"
            f"User-Agent: securewsgi-check/{__version__}\r\nAccept: */*\r\n"
            "Connection: close\r\n\r\n").encode("latin-1", "replace")


def _connect(report: Diagnosis, target: _Target, options: _Options
             ) -> Optional[socket.socket]:
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        report.fail("dns_error", f"cannot resolve {target.host}: {exc.strerror or exc}.",
                    "check the host name in the URL.", _detail(exc))
        return None
    last: Optional[BaseException] = None
    for family, kind, proto, _name, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(options.timeout)
        try:
            sock.connect(address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        report.tcp_connected = True
        report.address = str(address[0])
        return sock
    _connect_failed(report, target, options, last)
    return None


def _connect_failed(report: Diagnosis, target: _Target, options: _Options,
                    exc: Optional[BaseException]) -> None:
    where = f"{target.host} port {target.port}"
    if isinstance(exc, ConnectionRefusedError):
        report.fail("connection_refused",
                    f"nothing accepts connections on {where} (connection refused).",
                    "check the port number and that the server is running and listening "
                    "on this address.", _detail(exc))
    elif isinstance(exc, (socket.timeout, TimeoutError)):
        report.fail("connect_timeout",
                    f"no answer from {where} within {options.timeout:g}s while connecting.",
                    "check the address, the port and any firewall in between.", _detail(exc))
    else:
        cause = (getattr(exc, "strerror", None) or _detail(exc)) if exc else "no address"
        report.fail("network_error", f"cannot connect to {where}: {cause}.",
                    "check the address and the network.", _detail(exc) if exc else None)


def _record_handshake(report: Diagnosis, recorder: _HandshakeRecorder,
                      target: _Target) -> None:
    """Copy what the recorder saw into the report (never overwriting known facts)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    if recorder.server_chain and not report.chain:
        report.chain = [CertificateFacts.from_der(der, now) for der in recorder.server_chain]
        if report.hostname_match is None:
            leaf = x509.load_der_x509_certificate(recorder.server_chain[0])
            report.hostname_match = hostname_matches(target.host, leaf)
    if recorder.available and report.client_cert_requested is None and recorder.request_known:
        report.client_cert_requested = recorder.cert_requested
        report.client_ca_names = recorder.ca_names if recorder.cert_requested else None
    if recorder.client_cert_sent is not None:
        report.client_cert_sent = recorder.client_cert_sent
    elif not recorder.available and report.client_cert_subject is not None:
        report.client_cert_sent = True  # cannot see it; assume OpenSSL sent what it had


def _probe_without_verification(report: Diagnosis, target: _Target,
                                options: _Options) -> None:
    """Verification failed: shake hands once more without it, to learn the rest."""
    try:
        sock = socket.create_connection((target.host, target.port), timeout=options.timeout)
    except OSError:
        return
    recorder = _HandshakeRecorder()
    context = options.context(verify=False)
    recorder.install(context)
    try:
        with context.wrap_socket(sock, server_hostname=target.host) as tls:
            report.protocol, report.cipher = tls.version(), (tls.cipher() or (None,))[0]
            if not recorder.available and not report.chain:
                der = tls.getpeercert(binary_form=True)
                if der:
                    now = datetime.datetime.now(datetime.timezone.utc)
                    report.chain = [CertificateFacts.from_der(der, now)]
    except (OSError, ssl.SSLError):
        pass
    finally:
        sock.close()
    sent = report.client_cert_sent
    _record_handshake(report, recorder, target)
    report.client_cert_sent = sent  # what the real attempt sent is what counts


# --------------------------------------------------------------- handshake failures


def _handshake_failed(report: Diagnosis, recorder: _HandshakeRecorder,
                      exc: BaseException, target: _Target, options: _Options) -> None:
    report.detail = _detail(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        _verification_failed(report, exc, target, recorder.server_chain, options)
        return
    if isinstance(exc, (socket.timeout, TimeoutError)):
        report.fail("handshake_timeout",
                    f"the server accepted the TCP connection but did not answer the TLS "
                    f"handshake within {options.timeout:g}s.",
                    "check that this port serves HTTPS; a stuck server, or a service that "
                    "speaks another protocol and waits for more input, looks like this.",
                    _detail(exc))
        return
    reason = _reason(exc)
    if reason == "WRONG_VERSION_NUMBER":
        _not_tls(report, recorder, exc)
    elif reason in _VERSION_REASONS:
        _version_mismatch(report, exc, target, options)
    elif reason in _CIPHER_REASONS or (reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"
                                       and recorder.available and not recorder.server_hello):
        # refused before the server even chose a cipher: nothing in common
        report.fail("cipher_mismatch",
                    "the client and the server have no cipher suite (or signature "
                    f"algorithm) in common ({_detail(exc)}).",
                    "compare the server's tls.ciphers with what this client offers; cipher "
                    "strings do not apply to TLS 1.3 (try --tls-version 1.3).", _detail(exc))
    elif _client_certificate_refusal(report, recorder, exc):
        return
    elif isinstance(exc, (ConnectionResetError, BrokenPipeError)) or reason in _EOF_REASONS \
            or "EOF occurred" in str(exc):
        report.fail("closed_during_handshake",
                    "the server closed the connection during the TLS handshake without a "
                    "TLS alert.",
                    "check that this port serves HTTPS; the server's log may name the "
                    "reason.", _detail(exc))
    else:
        report.fail("handshake_failed", f"the TLS handshake failed: {_detail(exc)}.",
                    "the server's log names the reason.", _detail(exc))


def _version_mismatch(report: Diagnosis, exc: BaseException, target: _Target,
                      options: _Options) -> None:
    """No TLS version in common: try each version alone to say which the server takes."""
    accepted = [v for v in TLS_VERSIONS if _accepts_version(target, options, v)]
    tried = f"TLS {options.tls_version}" if options.tls_version else "TLS 1.2 and 1.3"
    if len(accepted) == 1:
        (only,) = accepted
        explanation = f"the server accepts only TLS {only}; this client tried {tried}."
        if only == "1.3":
            fix = ("offer TLS 1.3 (--tls-version 1.3; raise the client's maximum version), "
                   "or set the server's tls.min_version: TLSv1.2.")
        else:
            fix = ("offer TLS 1.2 (--tls-version 1.2; lower the client's minimum version), "
                   "or remove the server's tls.max_version so it accepts TLS 1.3.")
    elif not accepted:
        explanation = (f"the server accepts neither TLS 1.2 nor TLS 1.3; this client tried "
                       f"{tried}.")
        fix = "the server must allow TLS 1.2 or 1.3 (tls.min_version/tls.max_version)."
    else:  # both work alone: what was offered must have been narrower
        explanation = (f"the server accepts TLS 1.2 and 1.3, but not what this client "
                       f"tried ({tried}).")
        fix = "offer TLS 1.2 or 1.3 (--tls-version)."
    report.fail("tls_version_mismatch", explanation, fix, _detail(exc))


def _accepts_version(target: _Target, options: _Options, version: str) -> bool:
    """Does a handshake offering only `version` get past the version choice?"""
    probe = _Options(options.settings, options.timeout, version)
    try:
        sock = socket.create_connection((target.host, target.port), timeout=options.timeout)
    except OSError:
        return False
    try:
        with probe.context(verify=False).wrap_socket(sock, server_hostname=target.host):
            return True
    except ssl.SSLError as exc:  # a refusal for another reason: the version was fine
        return _reason(exc) not in _VERSION_REASONS and _reason(exc) not in _EOF_REASONS
    except OSError:
        return False
    finally:
        sock.close()


def _not_tls(report: Diagnosis, recorder: _HandshakeRecorder, exc: BaseException) -> None:
    first = recorder.first_record
    if first is None or first.startswith((b"HTTP/", b"<")):
        # "HTTP/1.1 400 ..." or, from servers that take a ClientHello for HTTP/0.9
        # (http.server, eventlet), a bare HTML error page.
        report.fail("plain_http",
                    "the server answered in plain HTTP, not TLS (OpenSSL: wrong version "
                    "number).",
                    "this port serves http://, not https://: use http:// for it, or the "
                    "port where the server serves HTTPS.", _detail(exc))
    else:
        report.fail("not_tls",
                    f"the server answered with something that is not TLS (first bytes "
                    f"{recorder.first_record!r}; OpenSSL: wrong version number).",
                    "check that this port serves HTTPS.", _detail(exc))


def _verification_failed(report: Diagnosis, exc: ssl.SSLCertVerificationError,
                         target: _Target, chain: list[bytes], options: _Options) -> None:
    code, message = exc.verify_code, exc.verify_message
    report.verify_error = message
    report.trusted = code in (_HOSTNAME_MISMATCH, _IP_MISMATCH)
    leaf = report.chain[0] if report.chain else None
    if code in (_HOSTNAME_MISMATCH, _IP_MISMATCH):
        report.hostname_match = False
        names = ", ".join(leaf.sans) if leaf and leaf.sans else "no names"
        report.fail("hostname_mismatch",
                    f"the server certificate is not valid for {target.host}: it names "
                    f"{names}.",
                    f"connect with one of those names, or give the server a certificate "
                    f"whose subject alternative names include {target.host}.", message)
    elif code in _UNKNOWN_CA_CODES:
        twins = _same_name_cas(chain, options.settings.ca_certs)
        if twins is not None:
            theirs, ours = twins
            report.fail("unknown_ca",
                        f"the server certificate (issuer {leaf.issuer if leaf else '?'}, "
                        f"{theirs}) is not signed by a CA this client trusts: --ca holds a "
                        f"different CA of the same name ({ours}).",
                        f"pass --ca with the CA that signed the server certificate "
                        f"({theirs}).", message)
            return
        issuer = f" (issuer {leaf.issuer})" if leaf else ""
        report.fail("unknown_ca",
                    f"the server certificate{issuer} is not signed by a CA this client "
                    f"trusts ({message}).",
                    "pass --ca with the CA that signed the server certificate.", message)
    elif code == _EXPIRED:
        which = _first(report, lambda c: c.days_left < 0)
        when = f" on {_date(which.not_after)}" if which else ""
        report.fail("server_cert_expired",
                    f"{_which(report, which)} expired{when}.",
                    "renew the server certificate, then reload the server (securewsgi: "
                    "SIGHUP) or restart it; if the date looks wrong, check this machine's "
                    "clock.", message)
    elif code == _NOT_YET_VALID:
        which = _first(report, lambda c: c.not_before > _iso(_utcnow()))
        when = f" before {_date(which.not_before)}" if which else " yet"
        report.fail("server_cert_not_yet_valid",
                    f"{_which(report, which)} is not valid{when}.",
                    "check the clock of this machine and of the machine that issued the "
                    "certificate.", message)
    elif code == _INVALID_PURPOSE:
        report.fail("server_cert_invalid",
                    "the server certificate is not meant for TLS servers (its extended key "
                    "usage lacks serverAuth).",
                    "give the server a certificate issued for server authentication.",
                    message)
    else:
        report.fail("server_cert_invalid",
                    f"the server certificate failed verification: {message}.",
                    "inspect it with 'openssl s_client -showcerts' and replace it.", message)


def _same_name_cas(chain: list[bytes], ca: Optional[Path]) -> Optional[tuple[str, str]]:
    """When --ca holds a CA whose name is the server issuer's but which is another CA,
    how to tell the two apart: (the issuer's fingerprint, those of --ca's namesakes)."""
    if not chain or ca is None:
        return None
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError:
        return None
    return _namesakes(certs[0], certs[1:], _ca_certificates(ca))


def _namesakes(leaf: x509.Certificate, sent: list[x509.Certificate],
               trusted: list[x509.Certificate]) -> Optional[tuple[str, str]]:
    """(issuer id, ids of the trusted CAs with the issuer's name), as SHA-256
    fingerprints when the issuer itself was sent along, else as key ids; None when no
    trusted CA has that name, or the names match and the keys do too."""
    twins = [ca for ca in trusted if ca.subject == leaf.issuer]
    issuer = next((c for c in sent if c.subject == leaf.issuer), None)
    if issuer is not None:
        theirs = short_fingerprint(issuer)
        mine = [short_fingerprint(ca) for ca in twins]
        kind = "sha256"
    else:
        theirs, kind = authority_key_id(leaf) or "", "key id"
        mine = [subject_key_id(ca) or "?" for ca in twins]
    if not twins or not theirs or theirs in mine:
        return None
    return f"{kind} {theirs}", ", ".join(f"{kind} {m}" for m in mine)


def _ca_certificates(path: Path) -> list[x509.Certificate]:
    try:
        files = ca_files(path) if path.is_dir() else [path]
        return [c for f in files for c in pem_certificates(f.read_bytes())]
    except OSError:
        return []


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _first(report: Diagnosis, test: Any) -> Optional[CertificateFacts]:
    return next((c for c in report.chain if test(c)), None)


def _which(report: Diagnosis, which: Optional[CertificateFacts]) -> str:
    if which is None or which is report.chain[0]:
        return "the server certificate"
    return f"the certificate {which.subject} in the server's chain"


def _client_certificate_refusal(report: Diagnosis, recorder: _HandshakeRecorder,
                                exc: BaseException) -> bool:
    """A TLS alert or close that means the server refused (or missed) our certificate."""
    reason = _reason(exc)
    requested = recorder.cert_requested or report.client_cert_requested
    if reason == _REQUIRED_ALERT or (reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"
                                     and requested and not report.client_cert_sent):
        report.client_cert_requested = True
        _required(report)
        return True
    if reason in _REFUSAL_REASONS and report.client_cert_sent:
        report.client_cert_requested = True
        report.client_cert_accepted = False
        cause, fix = _REFUSAL_REASONS[reason]
        not_before = report.client_cert_not_before
        if reason == "SSLV3_ALERT_BAD_CERTIFICATE" and not_before and not_before > _iso(
                _utcnow()):
            cause = f"it is not valid before {not_before} (TLS alert: bad certificate)"
            fix = ("wait until then or issue a new certificate; check the clocks of both "
                   "machines.")
        twins = _client_issuer_namesakes(report) if reason == "TLSV1_ALERT_UNKNOWN_CA" else None
        if twins is not None:
            cause += (f"; its issuer ({twins[0]}) is not the CA of the same name in --ca "
                      f"({twins[1]})")
        report.fail("client_cert_refused",
                    f"the server refused the client certificate {report.client_cert_subject}: "
                    f"{cause}.", fix, _detail(exc))
        return True
    return False


def _client_issuer_namesakes(report: Diagnosis) -> Optional[tuple[str, str]]:
    """--ca holds a CA named like our certificate's issuer but another one? (Development
    PKIs often share one name; then the server's CA may well be that other one.)"""
    if report.client_cert_file is None or report.ca == "system":
        return None
    try:
        certs = pem_certificates(Path(report.client_cert_file).read_bytes())
    except OSError:
        return None
    if not certs:
        return None
    return _namesakes(certs[0], certs[1:], _ca_certificates(Path(report.ca)))


def _required(report: Diagnosis) -> None:
    names = report.client_ca_names
    accepts = f" (it accepts certificates from: {'; '.join(names)})" if names else ""
    report.fail("client_cert_required",
                f"the server requires a client certificate and none was sent{accepts}.",
                "pass --cert and --key with a certificate signed by a CA the server trusts "
                "(its tls.ca_certs).", report.detail)


# ------------------------------------------------------------------ the HTTP request


def _exchange(report: Diagnosis, tls: ssl.SSLSocket, recorder: _HandshakeRecorder,
              target: _Target, options: _Options) -> None:
    request = _request(target)
    head = b""
    try:
        tls.sendall(request)  # a response proves a TLS 1.3 server accepted our certificate
        deadline = time.monotonic() + options.timeout
        while b"\r\n\r\n" not in head and len(head) < MAX_RESPONSE_HEAD:
            tls.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = tls.recv(16384)
            if not chunk:
                break
            head += chunk
    except (socket.timeout, TimeoutError) as exc:
        if not head:
            report.fail("response_timeout",
                        f"the TLS handshake worked, but no HTTP response came within "
                        f"{options.timeout:g}s.",
                        "the application may be slow or stuck; check the server's log.",
                        _detail(exc))
            return
    except (OSError, ssl.SSLError) as exc:
        if not head:
            _closed_after_handshake(report, recorder, exc, target, options)
            return
    if not head:
        _closed_after_handshake(report, recorder, None, target, options)
        return
    _read_status(report, head, target)


def _await_verdict(tls: ssl.SSLSocket, options: _Options) -> Optional[bytes]:
    """TLS 1.3: wait for the server's judgement of our certificate before writing.

    The server answers our Finished with session tickets (accepted) or an alert
    (refused). Reading it first matters: if our request reaches a server that has
    already closed, its kernel answers with a reset that destroys the unread alert,
    and all that is left to report is "EOF". Returns None when the server closed,
    else whatever (normally nothing) it sent; raises the alert as `ssl.SSLError`.
    A server that accepts and sends no tickets says nothing: that costs the whole
    wait, so this runs only after a first attempt ended without an answer.
    """
    ready, _, _ = select.select([tls], [], [], min(options.timeout, VERDICT_WAIT))
    if not ready:
        return b""  # a server that sends no tickets: go on, the read will tell
    tls.setblocking(False)
    try:
        return tls.recv(16384) or None
    except ssl.SSLWantReadError:
        return b""  # session tickets only: the certificate was accepted
    finally:
        tls.settimeout(options.timeout)


def _closed_after_handshake(report: Diagnosis, recorder: _HandshakeRecorder,
                            exc: Optional[BaseException], target: _Target,
                            options: _Options) -> None:
    """No response: with TLS 1.3 this is how a refused client certificate looks."""
    detail = _detail(exc) if exc is not None else "EOF"
    report.detail = detail
    if exc is not None and _client_certificate_refusal(report, recorder, exc):
        return
    if report.protocol == "TLSv1.3" and report.client_cert_requested:
        verdict = _second_look(target, options)
        if verdict is not None and _client_certificate_refusal(report, recorder, verdict):
            report.detail = _detail(verdict)
            return
        if not report.client_cert_sent:
            _required(report)
            return
        report.client_cert_accepted = False
        report.fail("client_cert_refused",
                    f"the server refused the client certificate {report.client_cert_subject}: "
                    "it closed the connection right after the TLS 1.3 handshake without "
                    "saying why, which is how TLS 1.3 servers refuse a client certificate.",
                    "the server's log names the reason (unknown CA, expired, revoked, wrong "
                    "extended key usage).", detail)
        return
    report.fail("no_http_response",
                "the TLS handshake worked, but the server closed the connection without an "
                "HTTP response.", "the server's log names the reason.", detail)


def _second_look(target: _Target, options: _Options) -> Optional[BaseException]:
    """The connection ended without an alert right after a TLS 1.3 handshake: shake
    hands once more and, this time, wait for the verdict before writing anything, so
    the server's alert (why it refused us) cannot be lost to a reset."""
    try:
        sock = socket.create_connection((target.host, target.port), timeout=options.timeout)
    except OSError:
        return None
    try:
        with options.context().wrap_socket(sock, server_hostname=target.host) as tls:
            _await_verdict(tls, options)
    except ssl.SSLError as exc:
        return exc
    except OSError:
        return None
    finally:
        sock.close()
    return None


def _read_status(report: Diagnosis, head: bytes, target: _Target) -> None:
    match = re.match(rb"HTTP/\d(?:\.\d)? (\d{3})(?: ([^\r\n]*))?", head)
    if match is None:
        report.fail("not_http",
                    f"the TLS handshake worked, but the answer is not HTTP ({head[:40]!r}).",
                    "check that this port serves HTTP over TLS.")
        return
    report.http_status = int(match.group(1))
    report.http_reason = (match.group(2) or b"").decode("latin-1").strip()
    if report.client_cert_requested and report.client_cert_sent:
        report.client_cert_accepted = True
    status = f"{report.http_status} {report.http_reason}".strip()
    if report.http_status == 403:
        if report.client_cert_sent:
            who = report.client_cert_subject
            report.fail("http_forbidden",
                        f"TLS and the client certificate are fine, but the server answered "
                        f"{status} to GET {target.path}: its authorization rules do not allow "
                        f"{who} there.",
                        f"use a certificate the rules for {target.path} allow, or change the "
                        "rules (the server's log names the rule).")
        else:
            report.fail("http_forbidden",
                        f"TLS is fine, but the server answered {status} to GET "
                        f"{target.path} without a client certificate.",
                        "pass --cert and --key with a certificate the server's rules allow "
                        "for this path.")
    elif report.http_status >= 400:
        fix = ("the application failed: see the server's log." if report.http_status >= 500
               else "check the URL's path; the server's log may say more.")
        report.fail("http_error",
                    f"TLS is fine, but the server answered {status} to GET {target.path}.",
                    fix)


# ---------------------------------------------------------------------------- notes


def _note_client_certificate(report: Diagnosis, settings: ClientSettings) -> None:
    """Local facts about our own certificate, which explain many refusals in advance."""
    if settings.certfile is None:
        return
    cert = x509.load_pem_x509_certificates(settings.certfile.read_bytes())[0]
    report.client_cert_file = str(settings.certfile)
    report.client_cert_subject = cert.subject.rfc4514_string()
    report.client_cert_not_before = _iso(cert.not_valid_before_utc)
    report.client_cert_not_after = _iso(cert.not_valid_after_utc)
    now = _utcnow()
    if now > cert.not_valid_after_utc:
        report.notes.append(f"the client certificate expired on "
                            f"{cert.not_valid_after_utc:%Y-%m-%d}")
    if now < cert.not_valid_before_utc:
        report.notes.append(f"the client certificate is not valid before "
                            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        report.notes.append("the client certificate's extended key usage lacks clientAuth")


def _note_expiry(report: Diagnosis) -> None:
    if report.chain and 0 <= report.chain[0].days_left < EXPIRY_NOTE_DAYS:
        not_after = parse_iso(report.chain[0].not_after)
        report.notes.append(f"the server certificate {expires(not_after)}")
    if report.client_cert_subject is not None and report.client_cert_requested is False:
        report.notes.append("the server did not ask for a client certificate; --cert was "
                            "not used")
