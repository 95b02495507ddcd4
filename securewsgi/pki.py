"""A small development PKI: a CA, a server certificate, client certificates and a CRL.

This exists so that trying securewsgi (and testing it) needs no ``openssl`` recipes:
``securewsgi-certs init DIR`` writes everything a mutual-TLS setup needs.  It is built
on ``cryptography`` only, never shells out, and is meant for development and tests;
production certificates come from a real CA.

File layout of a PKI directory (docs/source/operations.rst, "Development PKI")::

    ca.pem  ca-key.pem  server.pem  server-key.pem  crl.pem  NAME.pem  NAME-key.pem

Every file is written atomically (temporary file in the same directory, fsync,
``os.replace``) because a running server may re-read certificates and the CRL at any
moment; private keys are created with mode 0600 from the first byte.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import ipaddress
import os
import re
import secrets
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import SecureWSGIError
from .tls import pemkeys
from .tls.pemkeys import KeyLoadError, load_private_key

__all__ = [
    "KEY_TYPES",
    "RESERVED_NAMES",
    "CertificateAuthority",
    "PKIError",
    "PrivateKey",
    "init_pki",
    "issue_client_files",
    "revoke",
    "validate_client_name",
    "validate_host",
    "write_cert",
    "write_crl",
    "write_key",
]

KEY_TYPES = ("ecdsa-p256", "rsa2048")

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]
PublicKey = Union[ec.EllipticCurvePublicKey, rsa.RSAPublicKey]
StrPath = Union[str, "os.PathLike[str]"]

#: File stems that belong to the PKI itself and therefore cannot name a client.
RESERVED_NAMES = ("ca", "ca-key", "server", "server-key", "crl")

#: Hosts every development server certificate is valid for.
DEFAULT_SERVER_HOSTS = ("localhost", "127.0.0.1", "::1")

CA_FILE = "ca.pem"
DEV_CA_NAME = "securewsgi development CA"
CA_KEY_FILE = "ca-key.pem"
SERVER_FILE = "server.pem"
SERVER_KEY_FILE = "server-key.pem"
CRL_FILE = "crl.pem"

# Certificates start one hour in the past so that a peer whose clock is a little
# behind does not reject a certificate issued "just now" as not yet valid.
CLOCK_SKEW = _dt.timedelta(hours=1)
CA_VALIDITY = _dt.timedelta(days=3650)
LEAF_VALIDITY = _dt.timedelta(days=365)

_CLIENT_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
_DNS_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_MAX_CN = 64  # ub-common-name in RFC 5280


class PKIError(SecureWSGIError):
    """A PKI operation failed; the message is one line naming the file and the cause."""


@contextlib.contextmanager
def _about(path: Path) -> Iterator[None]:
    """Prefix validation errors with the directory they concern, so that every
    message of the directory operations names a file."""
    try:
        yield
    except PKIError as exc:
        raise PKIError(f"{path}: {exc}") from None


# --------------------------------------------------------------------------- helpers


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _validity(
    not_before: _dt.datetime | None,
    not_after: _dt.datetime | None,
    default_length: _dt.timedelta,
) -> tuple[_dt.datetime, _dt.datetime]:
    """Fill in the default validity window; explicit values are kept so tests can
    build expired or not-yet-valid certificates."""
    start = not_before if not_before is not None else _now() - CLOCK_SKEW
    end = not_after if not_after is not None else _now() + default_length
    return start, end


def _check_key_type(key_type: str) -> None:
    if key_type not in KEY_TYPES:
        raise PKIError(f"unknown key type {key_type!r} (choose one of: {', '.join(KEY_TYPES)})")


def generate_key(key_type: str = "ecdsa-p256") -> PrivateKey:
    """Create a private key of one of :data:`KEY_TYPES`."""
    _check_key_type(key_type)
    if key_type == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def key_type_of(key: PrivateKey) -> str:
    """The :data:`KEY_TYPES` name matching ``key``, so new leaves follow the CA."""
    return "rsa2048" if isinstance(key, rsa.RSAPrivateKey) else "ecdsa-p256"


def _key_usage(*, digital_signature: bool = False, key_encipherment: bool = False,
               cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _common_name(value: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, value)])


# ------------------------------------------------------------------------ validation


def validate_client_name(name: str) -> str:
    """Check that ``name`` can be used for ``NAME.pem``/``NAME-key.pem`` without
    escaping the directory or colliding with the PKI's own files.

    Names ending in ``-key`` are refused as well: client ``a-key`` would write
    ``a-key.pem``, which is client ``a``'s private key file.
    """
    if not _CLIENT_NAME_RE.fullmatch(name or ""):
        raise PKIError(
            f"invalid client name {name!r}: use 1-64 letters, digits, '.', '_' or '-',"
            " not starting with '.'"
        )
    lowered = name.lower()
    if lowered in RESERVED_NAMES or lowered.endswith("-key"):
        raise PKIError(
            f"invalid client name {name!r}: it would clash with the PKI's own files"
            f" ({', '.join(n + '.pem' for n in RESERVED_NAMES)}, *-key.pem)"
        )
    return name


def _parse_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    candidate = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return None
    if getattr(address, "scope_id", None):
        raise PKIError(f"invalid host {host!r}: scoped IPv6 addresses cannot be certified")
    return address


def _normalise_dns(host: str) -> str:
    """Lower-case, strip a trailing dot and IDNA-encode, then check each label."""
    name = host.rstrip(".").lower()
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise PKIError(f"invalid host {host!r}: not a valid DNS name ({exc})") from None
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]  # one leading wildcard label, e.g. *.example.test
    if len(name) > 253 or not all(_DNS_LABEL_RE.fullmatch(label) for label in labels):
        raise PKIError(f"invalid host {host!r}: not an IP address or DNS name")
    if labels[-1].isdigit():
        raise PKIError(f"invalid host {host!r}: not a valid IP address")
    return name


def validate_host(host: str) -> x509.GeneralName:
    """Turn a ``--host`` value into the SAN entry a TLS client will match: an
    ``IPAddress`` for IPv4/IPv6 literals (clients never match IPs against DNS SANs),
    a ``DNSName`` otherwise."""
    address = _parse_ip(host.strip())
    if address is not None:
        return x509.IPAddress(address)
    return x509.DNSName(_normalise_dns(host.strip()))


def _server_sans(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """SAN entries for ``hosts`` in order, without duplicates (``::1`` == ``0::1``)."""
    sans: list[x509.GeneralName] = []
    for host in hosts:
        entry = validate_host(host)
        if entry not in sans:
            sans.append(entry)
    if not sans:
        raise PKIError("a server certificate needs at least one host")
    return sans


def _uri_san(uri: str) -> x509.UniformResourceIdentifier:
    parsed = urllib.parse.urlsplit(uri)
    if not parsed.scheme or not uri.isascii() or any(c.isspace() for c in uri):
        raise PKIError(f"invalid SAN URI {uri!r}: expected an absolute ASCII URI"
                       " such as spiffe://example.org/service")
    return x509.UniformResourceIdentifier(uri)


def _email_san(address: str) -> x509.RFC822Name:
    local, _, domain = address.rpartition("@")
    if not local or not domain or not address.isascii() or any(c.isspace() for c in address):
        raise PKIError(f"invalid SAN e-mail {address!r}: expected user@domain (ASCII)")
    return x509.RFC822Name(address)


def _client_sans(san_uri: Iterable[str], san_dns: Iterable[str],
                 san_email: Iterable[str]) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = [_uri_san(u) for u in san_uri]
    sans += [x509.DNSName(_normalise_dns(d)) for d in san_dns]
    sans += [_email_san(e) for e in san_email]
    return sans


# ---------------------------------------------------------------------------- the CA


class CertificateAuthority:
    """A CA certificate and its key; issues server and client certificates and CRLs."""

    def __init__(self, cert: x509.Certificate, key: PrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def create(
        cls,
        common_name: str | None = None,
        *,
        key_type: str = "ecdsa-p256",
        not_before: _dt.datetime | None = None,
        not_after: _dt.datetime | None = None,
    ) -> CertificateAuthority:
        """Create a self-signed CA that may sign leaves only (pathlen 0).

        Without `common_name` it is ``securewsgi development CA`` plus a short random
        suffix: two development PKIs must not share one CA name, or "not signed by a
        CA this client trusts (issuer CN=X)" next to a trusted CA named X reads as a
        contradiction."""
        if common_name is None:
            common_name = f"{DEV_CA_NAME} {secrets.token_hex(3)}"
        key = generate_key(key_type)
        start, end = _validity(not_before, not_after, CA_VALIDITY)
        name = _common_name(common_name)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, directory: StrPath) -> CertificateAuthority:
        """Read ``DIR/ca.pem`` and ``DIR/ca-key.pem`` and check that they belong together."""
        directory = Path(directory)
        cert = _load_cert(directory / CA_FILE, hint=f"run 'securewsgi-certs init {directory}'")
        key = _load_key(directory / CA_KEY_FILE)
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise PKIError(f"{directory / CA_KEY_FILE}: key does not match {directory / CA_FILE}")
        return cls(cert, key)

    # ------------------------------------------------------------------ issuing

    def _leaf_builder(self, subject: x509.Name, public_key: PublicKey,
                      not_before: _dt.datetime | None,
                      not_after: _dt.datetime | None) -> x509.CertificateBuilder:
        """Fields every leaf shares: issuer, serial, validity, CA:FALSE, AKI, SKI."""
        start, end = _validity(not_before, not_after, LEAF_VALIDITY)
        if not_after is None:
            end = min(end, self.cert.not_valid_after_utc)  # never outlive the CA
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(self._authority_key_identifier(), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                           critical=False)
        )

    def _authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        """Copy the CA's SKI when it has one, so chain building matches exactly."""
        try:
            ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)

    def issue_server(
        self,
        hosts: Sequence[str],
        *,
        key_type: str = "ecdsa-p256",
        not_before: _dt.datetime | None = None,
        not_after: _dt.datetime | None = None,
        common_name: str | None = None,
    ) -> tuple[x509.Certificate, PrivateKey]:
        """Issue a TLS server certificate whose SANs are ``hosts`` (IP or DNS)."""
        sans = _server_sans(hosts)
        if common_name is None:
            first = hosts[0].strip()
            common_name = first if len(first) <= _MAX_CN else "securewsgi server"
        key = generate_key(key_type)
        usage = _key_usage(digital_signature=True,
                           key_encipherment=isinstance(key, rsa.RSAPrivateKey))
        cert = (
            self._leaf_builder(_common_name(common_name), key.public_key(),
                               not_before, not_after)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert, key

    def issue_client(
        self,
        name: str,
        *,
        san_uri: Iterable[str] = (),
        san_dns: Iterable[str] = (),
        san_email: Iterable[str] = (),
        key_type: str = "ecdsa-p256",
        not_before: _dt.datetime | None = None,
        not_after: _dt.datetime | None = None,
        extended_key_usage: Sequence[x509.ObjectIdentifier] = (ExtendedKeyUsageOID.CLIENT_AUTH,),
        subject: x509.Name | None = None,
    ) -> tuple[x509.Certificate, PrivateKey]:
        """Issue a client certificate with subject CN=name (or ``subject``).

        ``extended_key_usage=()`` leaves the EKU extension out entirely, and
        ``subject`` allows odd DNs; both exist so tests can probe identity parsing.
        """
        sans = _client_sans(san_uri, san_dns, san_email)
        try:
            subject_name = subject if subject is not None else _common_name(name)
        except ValueError as exc:
            raise PKIError(f"invalid client name {name!r}: {exc}") from None
        key = generate_key(key_type)
        builder = self._leaf_builder(subject_name, key.public_key(), not_before, not_after)
        builder = builder.add_extension(_key_usage(digital_signature=True), critical=True)
        if extended_key_usage:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage(list(extended_key_usage)), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key

    def build_crl(
        self,
        revoked_serials: Iterable[int],
        *,
        next_update_days: int = 365,
        revocation_dates: Mapping[int, _dt.datetime] | None = None,
        crl_number: int = 1,
    ) -> x509.CertificateRevocationList:
        """Build a CRL signed by this CA listing ``revoked_serials`` (duplicates dropped).

        ``revocation_dates`` keeps the original dates of serials carried over from an
        earlier CRL; new serials are revoked "now".
        """
        now = _now()
        dates = revocation_dates or {}
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - CLOCK_SKEW)
            .next_update(now + _dt.timedelta(days=next_update_days))
            .add_extension(x509.CRLNumber(crl_number), critical=False)
            .add_extension(self._authority_key_identifier(), critical=False)
        )
        for serial in dict.fromkeys(revoked_serials):
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(dates.get(serial, now))
                .build()
            )
            builder = builder.add_revoked_certificate(entry)
        return builder.sign(self.key, hashes.SHA256())

    def signed(self, obj: x509.Certificate | x509.CertificateRevocationList) -> bool:
        """Whether ``obj`` was signed by this CA (issuer name and signature)."""
        if isinstance(obj, x509.CertificateRevocationList):
            return obj.issuer == self.cert.subject and obj.is_signature_valid(
                self.key.public_key())
        try:
            obj.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


# ------------------------------------------------------------------ reading files


def _read_bytes(path: Path, hint: str = "") -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        suffix = f"; {hint}" if hint else ""
        raise PKIError(f"{path}: no such file{suffix}") from None
    except OSError as exc:
        raise PKIError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _spki(public_key: PublicKeyTypes) -> bytes:
    """DER SubjectPublicKeyInfo, a type-independent way to compare public keys."""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_cert(path: Path, hint: str = "") -> x509.Certificate:
    data = _read_bytes(path, hint)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise PKIError(f"{path}: not a PEM certificate") from None


def _load_key(path: Path) -> PrivateKey:
    try:
        return load_private_key(_read_bytes(path), None,
                                (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey))
    except KeyLoadError as exc:
        if exc.problem == pemkeys.NEEDS_PASSWORD:
            raise PKIError(f"{path}: encrypted private keys are not supported here") from None
        if exc.problem == pemkeys.UNSUPPORTED:
            raise PKIError(f"{path}: unsupported key type (need ECDSA or RSA)") from None
        raise PKIError(f"{path}: not a PEM private key") from None


def _load_crl(path: Path) -> x509.CertificateRevocationList | None:
    """The CRL at ``path``, or None when there is none yet."""
    if not path.exists():
        return None
    try:
        return x509.load_pem_x509_crl(_read_bytes(path))
    except ValueError:
        raise PKIError(f"{path}: not a PEM CRL; fix or remove it, then revoke again") from None


# ------------------------------------------------------------------ writing files


def _atomic_write(path: StrPath, data: bytes, mode: int) -> None:
    """Write ``data`` so readers see either the old file or the complete new one.

    The temporary file is created with ``mode`` by ``os.open`` (so a key is never
    readable by others, not even for a moment), fsynced, then renamed over ``path``;
    the rename also replaces whatever mode an existing file had.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                     mode)
    except OSError as exc:
        raise PKIError(f"{target}: cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise PKIError(f"{target}: cannot write: {exc.strerror or exc}") from None
        raise
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    """Persist the rename itself (POSIX); silently skipped where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_cert(path: StrPath, cert: x509.Certificate) -> None:
    """Write ``cert`` as PEM (mode 0644, atomically)."""
    _atomic_write(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def write_crl(path: StrPath, crl: x509.CertificateRevocationList) -> None:
    """Write ``crl`` as PEM (mode 0644, atomically; a server may be re-reading it)."""
    _atomic_write(path, crl.public_bytes(serialization.Encoding.PEM), 0o644)


def write_key(path: StrPath, key: PrivateKey, password: bytes | None = None) -> None:
    """Write ``key`` as PKCS#8 PEM with mode 0600, encrypted when ``password`` is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password
        else serialization.NoEncryption()
    )
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption)
    _atomic_write(path, data, 0o600)


# ------------------------------------------------------------- directory operations


def _refuse_existing(paths: Iterable[Path]) -> None:
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise PKIError(f"{existing[0]}: already exists{more}; use --force to overwrite")


def _ensure_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PKIError(f"{directory}: cannot create directory: {exc.strerror or exc}") from None
    if not directory.is_dir():
        raise PKIError(f"{directory}: not a directory")


def _write_pair(directory: Path, stem: str, cert: x509.Certificate,
                key: PrivateKey) -> list[Path]:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    write_key(key_path, key)  # key first: a cert without its key is useless
    write_cert(cert_path, cert)
    return [cert_path, key_path]


def init_pki(
    directory: StrPath,
    *,
    hosts: Iterable[str] = (),
    clients: Iterable[str] = (),
    key_type: str = "ecdsa-p256",
    force: bool = False,
) -> list[Path]:
    """Create a CA, a server certificate, client certificates and an empty CRL.

    Everything is validated before the first file is written, and no existing file
    is overwritten unless ``force``; returns the paths written, CA first.
    """
    directory = Path(directory)
    server_hosts = [*DEFAULT_SERVER_HOSTS, *hosts]
    with _about(directory):
        _check_key_type(key_type)
        _server_sans(server_hosts)
        names = list(dict.fromkeys(validate_client_name(n) for n in clients))
    stems = ["ca", "server", *names]
    targets = [directory / f"{s}{suffix}.pem" for s in stems for suffix in ("", "-key")]
    if not force:
        _refuse_existing([*targets, directory / CRL_FILE])
    _ensure_directory(directory)

    ca = CertificateAuthority.create(key_type=key_type)
    written = _write_pair(directory, "ca", ca.cert, ca.key)
    written += _write_pair(directory, "server", *ca.issue_server(server_hosts, key_type=key_type))
    for name in names:
        written += _write_pair(directory, name, *ca.issue_client(name, key_type=key_type))
    write_crl(directory / CRL_FILE, ca.build_crl([]))
    return [*written, directory / CRL_FILE]


def issue_client_files(
    directory: StrPath,
    name: str,
    *,
    san_uri: Iterable[str] = (),
    san_dns: Iterable[str] = (),
    san_email: Iterable[str] = (),
    key_type: str | None = None,
    force: bool = False,
) -> list[Path]:
    """Issue ``DIR/NAME.pem`` + ``DIR/NAME-key.pem`` from the CA in ``DIR``.

    The key type defaults to the CA's, so a PKI stays all-ECDSA or all-RSA.
    """
    directory = Path(directory)
    sans = (list(san_uri), list(san_dns), list(san_email))
    with _about(directory):
        validate_client_name(name)
        _client_sans(*sans)  # validate before refusing/overwriting anything
        if key_type is not None:
            _check_key_type(key_type)
    ca = CertificateAuthority.load(directory)
    if not force:
        _refuse_existing([directory / f"{name}.pem", directory / f"{name}-key.pem"])
    cert, key = ca.issue_client(name, san_uri=sans[0], san_dns=sans[1], san_email=sans[2],
                                key_type=key_type or key_type_of(ca.key))
    return _write_pair(directory, name, cert, key)


def revoke(directory: StrPath, name: str) -> Path:
    """Add the serial of ``DIR/NAME.pem`` to ``DIR/crl.pem`` and return its path.

    Entries of an existing CRL signed by this CA are kept (with their dates);
    a CRL from another CA (left over from an earlier ``init --force``) is replaced.
    """
    directory = Path(directory)
    with _about(directory):
        validate_client_name(name)
    ca = CertificateAuthority.load(directory)
    cert_path = directory / f"{name}.pem"
    cert = _load_cert(cert_path, hint=f"no client {name!r} was issued in {directory}")
    if not ca.signed(cert):
        raise PKIError(f"{cert_path}: not issued by {directory / CA_FILE}")
    crl_path = directory / CRL_FILE
    dates: dict[int, _dt.datetime] = {}
    number = 1
    old = _load_crl(crl_path)
    if old is not None and ca.signed(old):
        dates = {r.serial_number: r.revocation_date_utc for r in old}
        number = _crl_number(old) + 1
    crl = ca.build_crl([*dates, cert.serial_number], revocation_dates=dates,
                       crl_number=number)
    write_crl(crl_path, crl)
    return crl_path


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0
