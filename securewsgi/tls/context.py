"""Turn the `tls` section into a server `ssl.SSLContext`, refusing bad material early.

Why this is not just `load_cert_chain`: OpenSSL's own errors ("PEM lib", "key values
mismatch") name neither the file nor the fix, and some mistakes (an expired CA, a CRL
from the wrong issuer) are not errors to OpenSSL at all until every client is refused.
So each file is first read with `cryptography`, checked, and only then handed to
OpenSSL. The context built here is a plain stdlib one; the engine makes it green.
"""
from __future__ import annotations

import contextlib
import datetime
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from ..config import TLSConfig
from ..errors import ConfigError
from . import pemkeys
from .pemkeys import KeyLoadError, load_private_key
from .refusals import server_facts
from .validity import days_left, expires, when

# Mozilla "intermediate" for TLS 1.2 without DHE: ECDHE key exchange only (forward
# secrecy) and AEAD ciphers only. TLS 1.3 suites are not affected by this string.
DEFAULT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_MODES = {"server": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "mutual": ssl.CERT_REQUIRED}
_CA_SUFFIXES = (".pem", ".crt", ".cer")
_MAX_CHAIN = 10  # certificates above ours; OpenSSL's default verify depth is 100


def ca_files(path: Path) -> list[Path]:
    """The CA files of a `ca_certs` directory: every .pem/.crt/.cer in it, sorted."""
    return sorted(p for p in path.iterdir() if p.suffix.lower() in _CA_SUFFIXES
                  and p.is_file())


def pem_certificates(data: bytes) -> list[x509.Certificate]:
    """Every PEM certificate in `data`; empty when there is none or it is malformed."""
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        return []


@dataclass(frozen=True)
class CertificateInfo:
    """What an operator wants to see about a certificate at start-up."""

    subject: str
    issuer: str
    sans: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: int

    @classmethod
    def from_x509(cls, cert: x509.Certificate) -> CertificateInfo:
        return cls(
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            sans=_san_strings(cert),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            serial=cert.serial_number,
        )

    def days_left(self, now: Optional[datetime.datetime] = None) -> int:
        return days_left(self.not_after, now)


@dataclass(frozen=True)
class ServerTLS:
    """A ready server context plus the facts `--check` and the start-up log print."""

    context: Optional[ssl.SSLContext]
    mode: str
    certificate: Optional[CertificateInfo]
    ca_subjects: tuple[str, ...]
    crl_revoked: Optional[int]
    warnings: tuple[str, ...]
    # (issuer RFC 4514 string, serial) of every revoked client certificate: OpenSSL
    # does not consult the CRL when a TLS session is resumed, so the engine does.
    revoked: frozenset = frozenset()
    crl_next_update: Optional[datetime.datetime] = None

    @property
    def versions(self) -> str:
        if self.context is None:
            return "plain HTTP"
        low = self.context.minimum_version.name.replace("TLSv1_", "TLSv1.")
        high = self.context.maximum_version
        top = "TLSv1.3" if high == ssl.TLSVersion.MAXIMUM_SUPPORTED else high.name.replace(
            "TLSv1_", "TLSv1."
        )
        return low if low == top else f"{low}-{top}"


def build_server_tls(tls: TLSConfig, source: Path) -> ServerTLS:
    """Validate every TLS file of `tls` and build the server context from them."""
    if not tls.enabled:
        return ServerTLS(None, "none", None, (), None, ())
    assert tls.certfile is not None  # config guarantees it for every TLS mode
    now = datetime.datetime.now(datetime.timezone.utc)
    warnings: list[str] = []
    certs = _read_certificates(source, "tls.certfile", tls.certfile)
    leaf = certs[0]
    _check_validity(source, tls, leaf, now, warnings)
    key_path, key_key = (tls.keyfile, "tls.keyfile") if tls.keyfile else (tls.certfile,
                                                                           "tls.certfile")
    key = _read_private_key(source, key_key, key_path, tls.key_password)
    if _public_bytes(key.public_key()) != _public_bytes(leaf.public_key()):
        raise ConfigError(
            source, key_key,
            f"private key {key_path} does not match the certificate in {tls.certfile}",
        )
    ca_certs: list[x509.Certificate] = []
    if tls.ca_certs is not None:
        ca_certs = _read_ca_certs(source, tls.ca_certs, now, warnings)
    revoked: frozenset = frozenset()
    next_update = None
    if tls.crl_file is not None:
        revoked, next_update = _check_crl(source, tls.crl_file, ca_certs, now, warnings)
    chain = own_chain(certs, ca_certs)
    context = _make_context(tls, source, ca_certs, [leaf, *chain] if chain else [])
    info = CertificateInfo.from_x509(leaf)
    # What a refused handshake's log line says about our side (read only on failure).
    context.securewsgi_server = server_facts(  # type: ignore[attr-defined]
        str(tls.certfile), leaf, info.sans, ca_certs,
        str(tls.crl_file) if tls.crl_file else None, tls.min_version, tls.max_version)
    return ServerTLS(
        context=context,
        mode=tls.mode,
        certificate=info,
        ca_subjects=tuple(c.subject.rfc4514_string() for c in ca_certs),
        crl_revoked=len(revoked) if tls.crl_file is not None else None,
        warnings=tuple(warnings),
        revoked=revoked,
        crl_next_update=next_update,
    )


# ------------------------------------------------------------------------ the context


def own_chain(certfile_certs: Sequence[x509.Certificate],
              ca_certs: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """The chain OpenSSL would add to our certificate on every handshake, worked out once.

    When the certificate file holds the leaf alone, OpenSSL completes the chain it
    sends from the verify store (`ca_certs`), and verifies it again, at every handshake
    (measured: about a tenth of a mutual-TLS connection's CPU). Handing OpenSSL that
    chain with the certificate sends the same certificates and does the work once.
    Empty (OpenSSL decides, as before) when the file holds a chain already, when the
    leaf is self-signed, or when `ca_certs` does not complete the chain to a
    self-signed certificate with exactly one issuer at each step.
    """
    if len(certfile_certs) != 1:
        return []
    chain: list[x509.Certificate] = []
    current = certfile_certs[0]
    for _ in range(_MAX_CHAIN):
        if current.issuer == current.subject:
            return chain
        issuers = {c.public_bytes(serialization.Encoding.DER): c for c in ca_certs
                   if c.subject == current.issuer and _issued(current, c)}
        if len(issuers) != 1:  # none, or a choice OpenSSL might make differently
            return []
        current = next(iter(issuers.values()))
        chain.append(current)
    return []


def _issued(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _load_cert_chain(context: ssl.SSLContext, tls: TLSConfig,
                     chain: Sequence[x509.Certificate]) -> None:
    """load_cert_chain; with `chain` (our certificate, then its issuers), from those
    instead of tls.certfile (OpenSSL reads certificates from files only: a temporary
    file, of public certificates)."""
    password = tls.key_password
    keyfile = str(tls.keyfile or tls.certfile)  # OpenSSL takes the key, skips the certs

    def load(certfile: str) -> None:
        context.load_cert_chain(certfile, keyfile,
                                password=lambda: (password or "").encode())

    if chain:
        try:
            with tempfile.TemporaryDirectory(prefix="securewsgi-chain-") as directory:
                combined = Path(directory) / "chain.pem"
                combined.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM)
                                              for c in chain))
                load(str(combined))
                return
        except OSError:  # no writable temporary directory: OpenSSL builds it, as before
            pass
    load(str(tls.certfile))


def _make_context(tls: TLSConfig, source: Path, ca_certs: Sequence[x509.Certificate],
                  chain: Sequence[x509.Certificate] = ()) -> ssl.SSLContext:
    """`chain`: the certificates to send, ours first (`own_chain`); empty: as in
    tls.certfile."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[tls.min_version]
    if tls.max_version:
        context.maximum_version = _VERSIONS[tls.max_version]
    context.options |= (
        ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    )
    try:
        context.set_ciphers(tls.ciphers or DEFAULT_CIPHERS)
    except ssl.SSLError:
        raise ConfigError(source, "tls.ciphers",
                          f"OpenSSL accepts no cipher from {tls.ciphers!r}") from None
    try:
        _load_cert_chain(context, tls, chain)
    except ssl.SSLError as exc:  # pre-checks passed, so this is rare: say what OpenSSL said
        raise ConfigError(source, "tls.certfile", f"OpenSSL refused it: {exc.reason or exc}"
                          ) from None
    context.verify_mode = _MODES[tls.mode]
    if ca_certs:
        pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in ca_certs)
        context.load_verify_locations(cadata=pem)
    if tls.crl_file is not None:
        context.load_verify_locations(cafile=str(tls.crl_file))
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    context.set_alpn_protocols(["http/1.1"])
    # TLS 1.3 servers send two session tickets by default; with a client certificate
    # each costs a copy of the session that re-decodes it (about a fifth of a mutual-TLS
    # handshake's CPU in OpenSSL 3), for clients that mostly never resume (requests,
    # Go's default client). See TLSConfig.tickets; 0 also turns TLS 1.2 tickets off.
    context.num_tickets = tls.tickets
    if tls.tickets == 0:
        context.options |= ssl.OP_NO_TICKET
    context.sni_callback = _remember_server_name
    return context


def _remember_server_name(sslobj: object, server_name: Optional[str],
                          _context: ssl.SSLContext) -> None:
    """Keep the SNI name on the connection: Python offers no getter for it later."""
    with contextlib.suppress(AttributeError):
        sslobj.securewsgi_sni = server_name  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- file readers


def _read_bytes(source: Path, key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(source, key, f"cannot read {path}: {exc.strerror}") from None


def _read_certificates(source: Path, key: str, path: Path) -> list[x509.Certificate]:
    certs = pem_certificates(_read_bytes(source, key, path))
    if not certs:
        raise ConfigError(source, key, f"no PEM certificate in {path}")
    return certs


_SERVER_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey,
                     ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)


def _read_private_key(source: Path, key: str, path: Path, password: Optional[str]):
    try:
        return load_private_key(_read_bytes(source, key, path), password, _SERVER_KEY_TYPES)
    except KeyLoadError as exc:
        if exc.problem == pemkeys.NO_KEY:
            hint = " (or set tls.keyfile)" if key == "tls.certfile" else ""
            message = f"no PEM private key in {path}{hint}"
        elif exc.problem == pemkeys.NEEDS_PASSWORD:
            message = f"{path} is encrypted; set tls.key_password"
        elif exc.problem == pemkeys.WRONG_PASSWORD:
            key, message = "tls.key_password", f"wrong password for {path}"
        elif exc.problem == pemkeys.UNSUPPORTED:
            message = f"unsupported key type in {path}"
        else:
            message = f"unreadable private key in {path}: {exc.detail}"
        raise ConfigError(source, key, message) from None


def _public_bytes(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read_ca_certs(source: Path, path: Path, now: datetime.datetime,
                   warnings: list[str]) -> list[x509.Certificate]:
    """A CA file, or every PEM in a directory (no c_rehash links needed)."""
    if path.is_dir():
        files = ca_files(path)
        if not files:
            raise ConfigError(source, "tls.ca_certs", f"no .pem/.crt files in directory {path}")
        certs = [c for f in files for c in _read_certificates(source, "tls.ca_certs", f)]
    else:
        certs = _read_certificates(source, "tls.ca_certs", path)
    usable = []
    for cert in certs:
        if now > cert.not_valid_after_utc:
            raise ConfigError(
                source, "tls.ca_certs",
                f"CA {cert.subject.rfc4514_string()} in {path} expired on "
                f"{cert.not_valid_after_utc:%Y-%m-%d}; every client certificate would fail",
            )
        if not _is_ca(cert):
            warnings.append(f"tls.ca_certs: {cert.subject.rfc4514_string()} in {path} is not a"
                            " CA certificate (basicConstraints CA:FALSE); it cannot sign clients")
        usable.append(cert)
    return usable


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return cert.issuer == cert.subject  # an old-style self-signed root


def _check_validity(source: Path, tls: TLSConfig, cert: x509.Certificate,
                    now: datetime.datetime, warnings: list[str]) -> None:
    path = tls.certfile
    if now > cert.not_valid_after_utc:
        raise ConfigError(source, "tls.certfile", f"certificate {path} expired on "
                          f"{when(cert.not_valid_after_utc)}")
    if now < cert.not_valid_before_utc:
        raise ConfigError(source, "tls.certfile", f"certificate {path} is not valid before "
                          f"{when(cert.not_valid_before_utc)}")
    warning = expiry_warning(tls, cert.not_valid_after_utc, now)
    if warning is not None:
        warnings.append(warning)


def expiry_warning(tls: TLSConfig, not_after: datetime.datetime,
                   now: Optional[datetime.datetime] = None) -> Optional[str]:
    """The line that says tls.certfile has expired or expires within
    `tls.expiry_warning_days`; None while it does not."""
    if days_left(not_after, now) >= tls.expiry_warning_days:
        return None
    state = expires(not_after, now)
    if state.startswith("expired"):
        return (f"tls.certfile: certificate {tls.certfile} {state}, on {when(not_after)}: "
                "every client refuses it; renew it, then reload (SIGHUP)")
    return (f"tls.certfile: certificate {tls.certfile} {state}, on {when(not_after)} "
            f"(tls.expiry_warning_days: {tls.expiry_warning_days}); renew it, then reload "
            "(SIGHUP)")


def _check_crl(source: Path, path: Path, ca_certs: Sequence[x509.Certificate],
               now: datetime.datetime, warnings: list[str]
               ) -> tuple[frozenset, Optional[datetime.datetime]]:
    """A CRL must be signed by a client CA and current, or OpenSSL refuses everyone."""
    data = _read_bytes(source, "tls.crl_file", path)
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError:
        raise ConfigError(source, "tls.crl_file", f"no PEM CRL in {path}") from None
    issuers = [ca for ca in ca_certs if ca.subject == crl.issuer]
    if not any(crl.is_signature_valid(ca.public_key()) for ca in issuers):  # type: ignore[arg-type]
        raise ConfigError(source, "tls.crl_file",
                          f"{path} is not signed by any CA in tls.ca_certs; every client "
                          "certificate would be refused")
    next_update = crl.next_update_utc
    if next_update is not None and now > next_update:
        raise ConfigError(source, "tls.crl_file",
                          f"{path} expired on {next_update:%Y-%m-%d}; OpenSSL refuses every "
                          "client with an expired CRL")
    others = [c.subject.rfc4514_string() for c in ca_certs if c.subject != crl.issuer]
    if others:
        warnings.append("tls.crl_file: no CRL for " + "; ".join(others)
                        + ": clients signed by them will be refused")
    issuer = crl.issuer.rfc4514_string()
    return frozenset((issuer, entry.serial_number) for entry in crl), next_update


def _san_strings(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    out = []
    for name in sans:
        kind = {x509.DNSName: "DNS", x509.IPAddress: "IP", x509.UniformResourceIdentifier: "URI",
                x509.RFC822Name: "email"}.get(type(name), type(name).__name__)
        out.append(f"{kind}:{name.value}")
    return tuple(out)

