"""`PeerIdentity`: a verified client certificate, parsed once, in the shapes apps need.

Applications should never parse certificates themselves, and the server should never
parse one twice: a `PeerIdentity` is built once per connection (or once per forwarded
header value) and carries both the typed fields and the mod_ssl-style environ keys.
"""
from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass, field
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ..errors import SecureWSGIError
from .validity import days_left

# mod_ssl's short names for DN components (SSL_CLIENT_S_DN_<name>); others are omitted
# from the per-attribute keys but stay in the RFC 4514 string.
_SHORT_NAMES = {
    NameOID.COMMON_NAME: "CN",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COUNTRY_NAME: "C",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.LOCALITY_NAME: "L",
    NameOID.EMAIL_ADDRESS: "Email",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.USER_ID: "UID",
    NameOID.TITLE: "T",
    NameOID.INITIALS: "I",
    NameOID.GIVEN_NAME: "G",
    NameOID.SURNAME: "S",
}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
Attributes = tuple[tuple[str, str], ...]


class CertificateParseError(SecureWSGIError, ValueError):
    """The bytes are not a certificate (only possible for certificates handed over as
    text: a forwarded header, or the hosting server's ``SSL_CLIENT_CERT``)."""


@dataclass(frozen=True)
class PeerIdentity:
    """The caller's certificate.

    `source` says who verified it: "tls" (our own handshake), "proxy" (a trusted proxy,
    in a forwarded header) or "server" (the server hosting the middleware, e.g. Apache
    mod_ssl, in ``environ["SSL_CLIENT_CERT"]``). `common_name` is the first CN in the
    certificate's DER order, as mod_ssl's ``SSL_CLIENT_S_DN_CN``.
    """

    subject: str
    issuer: str
    common_name: Optional[str]
    subject_attributes: Attributes
    issuer_attributes: Attributes
    serial: int
    not_before: datetime.datetime
    not_after: datetime.datetime
    san_dns: tuple[str, ...]
    san_uri: tuple[str, ...]
    san_email: tuple[str, ...]
    san_ip: tuple[str, ...]
    fingerprint_sha256: str
    pem: str
    source: str = "tls"
    _environ: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_der(cls, der: bytes, source: str = "tls") -> PeerIdentity:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise CertificateParseError(f"not a DER certificate: {exc}") from None
        return cls.from_certificate(cert, source, der)

    @classmethod
    def from_pem(cls, pem: bytes, source: str = "proxy") -> PeerIdentity:
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise CertificateParseError(f"not a PEM certificate: {exc}") from None
        return cls.from_certificate(cert, source)

    @classmethod
    def from_certificate(cls, cert: x509.Certificate, source: str = "tls",
                         der: Optional[bytes] = None) -> PeerIdentity:
        if der is None:
            der = cert.public_bytes(serialization.Encoding.DER)
        subject = _attributes(cert.subject)
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            sans = x509.SubjectAlternativeName([])
        except ValueError as exc:  # a malformed extension in a forwarded certificate
            raise CertificateParseError(f"bad subjectAltName: {exc}") from None
        return cls(
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            common_name=next((v for k, v in subject if k == "CN"), None),
            subject_attributes=subject,
            issuer_attributes=_attributes(cert.issuer),
            serial=cert.serial_number,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            san_dns=tuple(sans.get_values_for_type(x509.DNSName)),
            san_uri=tuple(sans.get_values_for_type(x509.UniformResourceIdentifier)),
            san_email=tuple(sans.get_values_for_type(x509.RFC822Name)),
            san_ip=tuple(str(ip) for ip in sans.get_values_for_type(x509.IPAddress)),
            fingerprint_sha256=hashlib.sha256(der).hexdigest(),
            pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            source=source,
        )

    @property
    def serial_hex(self) -> str:
        return format(self.serial, "X")

    def days_remaining(self, now: Optional[datetime.datetime] = None) -> int:
        return max(0, days_left(self.not_after, now))

    def environ(self) -> dict[str, str]:
        """The mod_ssl-style SSL_CLIENT_* keys (computed once, then shared read-only)."""
        if not self._environ:
            self._environ.update(_client_environ(self))
        return self._environ


def _attributes(name: x509.Name) -> Attributes:
    """(short name, value) pairs in the certificate's own (DER) order.

    mod_ssl walks the name with ``X509_NAME_get_entry(name, 0..n)``, which is DER order
    -- the reverse of the RFC 4514 string. Its ``SSL_CLIENT_S_DN_CN`` is therefore the
    first CN in DER order, and so is every CN securewsgi hands out (environ keys,
    `PeerIdentity.common_name`, ``REMOTE_USER``, the ``cn`` rule field): an app moved
    from Apache sees the same user, and no two consumers disagree about who it is.
    """
    out = []
    for attribute in name:  # iterating an x509.Name yields its attributes in DER order
        short = _SHORT_NAMES.get(attribute.oid)
        if short is not None:
            value = attribute.value
            out.append((short, value if isinstance(value, str) else value.decode("latin-1")))
    return tuple(out)


def _dn_keys(prefix: str, dn: str, attributes: Attributes) -> dict[str, str]:
    """``PREFIX`` (the RFC 4514 string), ``PREFIX_CN`` (the first CN in DER order) and,
    for a repeated attribute, ``PREFIX_OU_0``, ``PREFIX_OU_1``, ... in DER order."""
    keys = {prefix: dn}
    counts: dict[str, int] = {}
    for short, _ in attributes:
        counts[short] = counts.get(short, 0) + 1
    seen: dict[str, int] = {}
    for short, value in attributes:
        index = seen.get(short, 0)
        seen[short] = index + 1
        if index == 0:
            keys[f"{prefix}_{short}"] = value
        if counts[short] > 1:
            keys[f"{prefix}_{short}_{index}"] = value
    return keys


def openssl_time(moment: datetime.datetime) -> str:
    """`Jan  2 03:04:05 2027 GMT`, as mod_ssl (ASN1_TIME_print) writes it."""
    moment = moment.astimezone(datetime.timezone.utc)
    return (f"{_MONTHS[moment.month - 1]} {moment.day:2d} "
            f"{moment:%H:%M:%S} {moment.year} GMT")


def _client_environ(peer: PeerIdentity) -> dict[str, str]:
    env: dict[str, str] = {"SSL_CLIENT_VERIFY": "SUCCESS"}
    env.update(_dn_keys("SSL_CLIENT_S_DN", peer.subject, peer.subject_attributes))
    env.update(_dn_keys("SSL_CLIENT_I_DN", peer.issuer, peer.issuer_attributes))
    env["SSL_CLIENT_M_SERIAL"] = peer.serial_hex
    env["SSL_CLIENT_V_START"] = openssl_time(peer.not_before)
    env["SSL_CLIENT_V_END"] = openssl_time(peer.not_after)
    env["SSL_CLIENT_V_REMAIN"] = str(peer.days_remaining())
    for kind, values in (("DNS", peer.san_dns), ("URI", peer.san_uri),
                         ("Email", peer.san_email), ("IP", peer.san_ip)):
        for index, value in enumerate(values):
            env[f"SSL_CLIENT_SAN_{kind}_{index}"] = value
    env["SSL_CLIENT_CERT"] = peer.pem
    env["SSL_CLIENT_CERT_SHA256"] = peer.fingerprint_sha256
    return env
