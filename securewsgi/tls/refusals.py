"""Why a TLS handshake was refused, in the words an operator needs: who, why, what to do.

Both engines hand every refused handshake to `engines.common.handshake_failed`, which
asks `explain` for one `Refusal` and logs it as one line. Nothing here runs for a
handshake that succeeds; every fact is gathered after the failure:

* The client's certificate. OpenSSL keeps the chain it tried to verify
  (`SSL_get0_verified_chain`) also when verification failed, leaf first; CPython has
  it as `SSLSocket._sslobj.get_verified_chain()` (private in 3.10-3.12, public as
  `SSLSocket.get_verified_chain()` from 3.13). A message callback on the context
  would see the Certificate message too, but OpenSSL calls it for every record of
  every connection for its whole life (measured: 31 calls per mutual-TLS 1.3
  handshake and 4 per keep-alive request and response, about 0.7 us each), so it
  is not used.
* Why it was refused: `SSLCertVerificationError.verify_code` (OpenSSL's
  X509_V_ERR_* numbers, stable across versions unlike the messages), else the
  OpenSSL reason code of the alert or error. The raw OpenSSL text is kept as
  `detail` only: "self-signed certificate in certificate chain" means "not signed by
  a CA in tls.ca_certs" when the client sends its root along, and says so.
* Our own side: `ServerFacts`, attached to each server context by context.py.
* Whether the client sent anything at all before closing: `silent`, from TCP_INFO.
"""
from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ..text import printable
from .facts import ResumedPeerRefused
from .validity import utcnow, when

FINGERPRINT_HEX = 16  # a short fingerprint: the first 8 bytes of a SHA-256 / key id

# OpenSSL X509_V_ERR_* codes (x509_vfy.h).
_UNABLE_TO_GET_ISSUER, _UNABLE_TO_GET_CRL = 2, 3
_SIGNATURE_FAILURE, _NOT_YET_VALID, _EXPIRED = 7, 9, 10
_CRL_NOT_YET_VALID, _CRL_EXPIRED = 11, 12
_SELF_SIGNED_LEAF, _SELF_SIGNED_IN_CHAIN = 18, 19
_NO_LOCAL_ISSUER, _UNABLE_TO_VERIFY_LEAF = 20, 21
_REVOKED, _INVALID_CA, _PATH_LENGTH, _INVALID_PURPOSE = 23, 24, 25, 26
_UNKNOWN_ISSUER_CODES = {_UNABLE_TO_GET_ISSUER, _SIGNATURE_FAILURE, _SELF_SIGNED_LEAF,
                         _SELF_SIGNED_IN_CHAIN, _NO_LOCAL_ISSUER, _UNABLE_TO_VERIFY_LEAF}
_EOF_REASONS = {"UNEXPECTED_EOF_WHILE_READING", "EOF"}

PLAIN_HTTP_REASON = "plain HTTP sent to the TLS port"
UNKNOWN_CA_REASON = "client certificate from an unknown CA"
NO_CERTIFICATE_REASON = "no client certificate"


# ------------------------------------------------------------------ the facts


@dataclass(frozen=True)
class CALabel:
    """A CA as an operator can tell it apart from another of the same name."""

    subject: str
    sha256: str  # short SHA-256 fingerprint of the certificate
    key_id: Optional[str]  # short subject key identifier

    @classmethod
    def from_x509(cls, cert: x509.Certificate) -> CALabel:
        return cls(cert.subject.rfc4514_string(), short_fingerprint(cert),
                   subject_key_id(cert))

    def text(self, by_key_id: bool = False) -> str:
        if by_key_id and self.key_id:
            return f"{self.subject} (key id {self.key_id})"
        return f"{self.subject} (sha256 {self.sha256})"


@dataclass(frozen=True)
class ServerFacts:
    """What a refusal line says about our own side (built once per TLS context)."""

    certfile: str
    not_after: datetime.datetime
    sans: tuple[str, ...]
    issuer: str
    issuer_key_id: Optional[str]
    client_cas: tuple[CALabel, ...] = ()
    crl_file: Optional[str] = None
    min_version: str = "TLSv1.2"
    max_version: Optional[str] = None

    def cas_text(self, by_key_id: bool = False) -> str:
        if not self.client_cas:
            return "a CA in tls.ca_certs"
        return " or ".join(ca.text(by_key_id) for ca in self.client_cas)


@dataclass(frozen=True)
class ClientCertificate:
    """The certificate a refused client sent, as the log line names it."""

    subject: str
    issuer: str
    serial: str
    sha256: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    issuer_key_id: Optional[str]
    issuer_sha256: Optional[str]  # when the client sent its issuer along

    @classmethod
    def from_chain(cls, chain: Sequence[bytes]) -> Optional[ClientCertificate]:
        try:
            leaf = x509.load_der_x509_certificate(chain[0])
        except (IndexError, ValueError):
            return None
        issuer_sha = None
        for der in chain[1:]:
            try:
                candidate = x509.load_der_x509_certificate(der)
            except ValueError:
                continue
            if candidate.subject == leaf.issuer:
                issuer_sha = short_fingerprint(candidate)
                break
        return cls(subject=leaf.subject.rfc4514_string(), issuer=leaf.issuer.rfc4514_string(),
                   serial=format(leaf.serial_number, "X"),
                   sha256=leaf.fingerprint(hashes.SHA256()).hex(),
                   not_before=leaf.not_valid_before_utc, not_after=leaf.not_valid_after_utc,
                   issuer_key_id=authority_key_id(leaf), issuer_sha256=issuer_sha)

    def text(self) -> str:
        return f"subject={self.subject}, issuer={self.issuer}, serial={self.serial}"


@dataclass(frozen=True)
class Refusal:
    """One refused handshake: a plain reason, the client's certificate when it sent one,
    a concrete fix, and OpenSSL's own words as detail."""

    reason: str
    hint: Optional[str] = None
    detail: Optional[str] = None
    cert: Optional[ClientCertificate] = None
    plain_http: bool = False  # the client spoke plain HTTP: answer it in HTTP

    def text(self) -> str:
        """`reason=... cert="..." hint="..." detail="..."` (the text log line's tail)."""
        parts = [f"reason={_clean(self.reason)}"]
        if self.cert is not None:
            parts.append(f'cert="{_clean(self.cert.text())}"')
        if self.hint:
            parts.append(f'hint="{_clean(self.hint)}"')
        if self.detail and self.detail != self.reason:
            parts.append(f'detail="{_clean(self.detail)}"')
        return " ".join(parts)

    def fields(self, client: str) -> dict[str, Any]:
        """The same facts as separate fields, for JSON logs."""
        data: dict[str, Any] = {"event": "tls_handshake_refused", "client": client,
                                "reason": self.reason}
        if self.cert is not None:
            data.update(cert_subject=self.cert.subject, cert_issuer=self.cert.issuer,
                        cert_serial=self.cert.serial, cert_sha256=self.cert.sha256)
        if self.hint:
            data["hint"] = self.hint
        if self.detail:
            data["detail"] = self.detail
        return data


# --------------------------------------------------------------- explaining


def explain(exc: Optional[BaseException], server: Optional[ServerFacts] = None,
            chain: Sequence[bytes] = (), sni: Optional[str] = None,
            silent: Optional[bool] = None) -> Refusal:
    """The `Refusal` for what a server-side handshake raised. `chain` is the client's
    certificate chain as far as OpenSSL got (leaf first), `sni` the name the client
    asked for, `silent` whether it closed without sending a byte."""
    cert = ClientCertificate.from_chain(chain) if chain else None
    if exc is None:
        return Refusal("unknown", cert=cert)
    verify_code = getattr(exc, "verify_code", None)
    if verify_code is not None:
        detail = str(getattr(exc, "verify_message", "") or "") or None
        return _verify_failed(int(verify_code), detail, cert, server)
    reason = str(getattr(exc, "reason", None) or "")
    detail = _detail(exc)
    explained = (_client_alert(reason, server, sni) or _protocol(reason, server)
                 or _closed(exc, reason, silent))
    if explained is not None:
        return Refusal(explained[0], explained[1], detail, cert,
                       plain_http=reason == "HTTP_REQUEST")
    if isinstance(exc, ResumedPeerRefused):
        return Refusal(str(exc), "the client needs a new certificate", None, cert)
    plain = reason.replace("_", " ").lower() if reason else detail
    return Refusal(plain or type(exc).__name__, None, detail, cert)


def _verify_failed(code: int, detail: Optional[str], cert: Optional[ClientCertificate],
                   server: Optional[ServerFacts]) -> Refusal:
    """The server refused the client's certificate (X509 verification)."""
    new_cert = f"the client needs a new certificate from {_cas(server)}"
    if code in _UNKNOWN_ISSUER_CODES:
        reason = UNKNOWN_CA_REASON + (" (it is self-signed)" if code == _SELF_SIGNED_LEAF
                                      else "")
        return Refusal(reason, _unknown_ca_hint(cert, server), detail, cert)
    if code == _EXPIRED:
        if cert is not None and cert.not_after < utcnow():
            return Refusal(f"client certificate expired (on {when(cert.not_after)})",
                           new_cert, detail, cert)
        return Refusal("a CA certificate in the client's chain has expired",
                       f"{new_cert}, or renew the expired CA", detail, cert)
    if code == _NOT_YET_VALID:
        since = f" (valid from {when(cert.not_before)})" if cert else ""
        return Refusal(f"client certificate not yet valid{since}",
                       "wait until then or reissue it; if that date is wrong, check the "
                       "clocks of the client, this server and the CA", detail, cert)
    if code == _REVOKED:
        crl = f" ({server.crl_file})" if server and server.crl_file else ""
        return Refusal("client certificate revoked",
                       f"the client needs a new certificate: this one is on tls.crl_file{crl}",
                       detail, cert)
    if code == _INVALID_PURPOSE:
        return Refusal("client certificate not for client authentication (its extended "
                       "key usage lacks clientAuth)",
                       "reissue it with the clientAuth extended key usage "
                       "(securewsgi-certs issue does)", detail, cert)
    if code == _UNABLE_TO_GET_CRL:
        issuer = cert.issuer if cert else "the client's CA"
        return Refusal(f"no CRL for the client certificate's issuer ({issuer})",
                       f"add the CRL of {issuer} to tls.crl_file, or remove that CA from "
                       "tls.ca_certs", detail, cert)
    if code in (_CRL_EXPIRED, _CRL_NOT_YET_VALID):
        crl = server.crl_file if server and server.crl_file else "tls.crl_file"
        return Refusal(f"the CRL in tls.crl_file ({crl}) is "
                       f"{'out of date' if code == _CRL_EXPIRED else 'not yet valid'}",
                       "publish a current CRL there, then reload (SIGHUP)", detail, cert)
    if code in (_INVALID_CA, _PATH_LENGTH):
        return Refusal("the client's certificate chain is not valid (a certificate in it "
                       "is not a CA, or the chain is too long)",
                       f"{new_cert}, sent with its intermediate CAs", detail, cert)
    return Refusal(f"client certificate refused: {detail or f'X509 error {code}'}",
                   new_cert, detail, cert)


def _unknown_ca_hint(cert: Optional[ClientCertificate],
                     server: Optional[ServerFacts]) -> str:
    """Name the client's issuer and ours; with equal names, by fingerprint."""
    cas = server.client_cas if server else ()
    if cert is None:
        return f"issue the client a certificate from {_cas(server)}"
    twins = [ca for ca in cas if ca.subject == cert.issuer]
    if twins:
        by_key_id = cert.issuer_sha256 is None
        theirs = (f"key id {cert.issuer_key_id}" if by_key_id
                  else f"sha256 {cert.issuer_sha256}")
        ours = " or ".join(ca.text(by_key_id) for ca in twins)
        return (f"its issuer {cert.issuer} ({theirs}) is another CA than the one of that "
                f"name in tls.ca_certs, {ours}: add the client's CA to tls.ca_certs, or "
                f"issue the client a certificate from {ours}")
    ours = _cas(server)
    return (f"add the client's CA ({cert.issuer}) to tls.ca_certs, or issue the client a "
            f"certificate from {ours}")


def _client_alert(reason: str, server: Optional[ServerFacts], sni: Optional[str]
                  ) -> Optional[tuple[str, Optional[str]]]:
    """The client refused *our* certificate (it sent an alert): our side to fix."""
    certfile = f"tls.certfile ({server.certfile})" if server else "tls.certfile"
    if reason == "TLSV1_ALERT_UNKNOWN_CA":
        issuer = ""
        if server is not None:
            key_id = f", key id {server.issuer_key_id}" if server.issuer_key_id else ""
            issuer = f" ({server.issuer}{key_id})"
        return ("the client does not trust our certificate (unknown CA)",
                f"give the client the CA that signed tls.certfile{issuer}: curl --cacert, "
                "requests verify=, securewsgi-check --ca")
    if reason == "SSLV3_ALERT_CERTIFICATE_EXPIRED":
        if server is not None and server.not_after < utcnow():
            return (f"the client rejected our certificate: it expired on "
                    f"{when(server.not_after)} (tls.certfile)",
                    f"renew {certfile}, then reload (SIGHUP)")
        valid = f" until {when(server.not_after)}" if server else ""
        return ("the client says our certificate has expired",
                f"{certfile} is valid{valid}: check the client's clock, and the "
                "expiry of the CA certificates in tls.certfile's chain")
    if reason == "SSLV3_ALERT_BAD_CERTIFICATE":
        return _bad_certificate(server, sni, certfile)
    if reason == "SSLV3_ALERT_CERTIFICATE_UNKNOWN":
        return ("the client rejected our certificate (certificate unknown)",
                "run securewsgi-check with the client's CA on the client's machine to see "
                "why")
    if reason == "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE":
        return ("the client rejected our certificate as unsuitable (unsupported "
                "certificate, e.g. no serverAuth extended key usage)",
                f"reissue {certfile} for server authentication")
    return None


def _bad_certificate(server: Optional[ServerFacts], sni: Optional[str], certfile: str
                     ) -> tuple[str, str]:
    names = ", ".join(server.sans) if server and server.sans else "its names"
    if sni and server is not None and not _covers(server.sans, sni):
        return (f"the client rejected our certificate: it asked for {sni}, which "
                "tls.certfile does not cover",
                f"connect with a name {certfile} covers ({names}), or reissue it to "
                f"include {sni}")
    return ("the client rejected our certificate (bad certificate: most often a host "
            "name or IP address it does not cover)",
            f"the client must connect with a name {certfile} covers ({names})")


def _protocol(reason: str, server: Optional[ServerFacts]
              ) -> Optional[tuple[str, Optional[str]]]:
    """Versions, ciphers and clients that do not speak TLS at all."""
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return (NO_CERTIFICATE_REASON,
                f"the client must send a certificate from {_cas(server)}: tls.mode is mutual")
    if reason == "UNSUPPORTED_PROTOCOL":
        return _version_refusal(server)
    if reason == "TLSV1_ALERT_PROTOCOL_VERSION":
        top = server.max_version if server and server.max_version else "TLSv1.3"
        return (f"the client refused the TLS version we chose ({top} at most)",
                f"the client accepts only newer versions: remove tls.max_version ({top}), "
                "or allow that version in the client")
    if reason == "NO_SHARED_CIPHER":
        return ("no cipher in common",
                "the client offers none of tls.ciphers (TLS 1.2): allow TLS 1.3 in the "
                "client, or widen tls.ciphers (null = the safe default)")
    if reason == "HTTP_REQUEST":
        return (PLAIN_HTTP_REASON,
                "the client must use https:// (it was answered 400: this port speaks "
                "HTTPS)")
    if reason == "HTTPS_PROXY_REQUEST":
        return ("HTTP proxy request (CONNECT) sent to the TLS port",
                "this is not a proxy: the client must use https:// to this port directly")
    if reason == "WRONG_VERSION_NUMBER":
        return ("not a TLS client hello (garbage or another protocol)",
                "the client must speak TLS here: check its URL scheme (https://) and port")
    if reason == "BAD_SIGNATURE":
        return ("the client's signature does not verify with its certificate (its private "
                "key does not belong to the certificate)",
                "configure the client with the key issued with its certificate")
    return None


def _version_refusal(server: Optional[ServerFacts]) -> tuple[str, str]:
    low = server.min_version if server else "TLSv1.2"
    high = server.max_version if server else None
    if high and high == low:
        return (f"the client offers no TLS version this server accepts (only {low}: "
                "tls.min_version/tls.max_version)",
                f"allow {low} in the client, or widen tls.min_version/tls.max_version")
    below = "TLS 1.2" if low == "TLSv1.3" else "TLS 1.1"
    usable = "TLS 1.3" if low == "TLSv1.3" else "TLS 1.2 or 1.3"
    lower = ", or set tls.min_version: TLSv1.2" if low == "TLSv1.3" else ""
    return (f"the client offers only {below} or lower, below the server minimum "
            f"(tls.min_version: {low})",
            f"enable {usable} in the client{lower}")


def _closed(exc: BaseException, reason: str, silent: Optional[bool]
            ) -> Optional[tuple[str, Optional[str]]]:
    """The client went away during the handshake."""
    eof = reason in _EOF_REASONS or "EOF occurred" in str(exc) or isinstance(
        exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError))
    if not eof:
        return None
    if silent:
        return ("the client closed the connection without sending a TLS hello",
                "a TCP health check does this, and so does a client that cannot use its own "
                "certificate and key (a key that does not match the certificate, a wrong "
                "password): run securewsgi-check with the client's --cert and --key")
    what = ("connection reset by the client during the handshake"
            if isinstance(exc, ConnectionResetError)
            else "client closed the connection during the handshake")
    return (what, "a client that rejects our certificate without an alert does this: run "
                  "securewsgi-check from the client's machine to see why")


# ------------------------------------------------------------------ helpers


def _detail(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return re.sub(r"\s*\(_ssl\.c:\d+\)", "", text)


def _clean(text: str, limit: int = 400) -> str:
    """One line, no quotes to break the key="value" shape: a client chooses its own
    certificate's names and its SNI, so nothing of them may forge a log line."""
    return printable(text, limit).replace('"', "'")


def _cas(server: Optional[ServerFacts]) -> str:
    return server.cas_text() if server else "a CA in tls.ca_certs"


def _short(digest: bytes) -> str:
    return digest.hex()[:FINGERPRINT_HEX]


def short_fingerprint(cert: x509.Certificate) -> str:
    """The first 8 bytes of the certificate's SHA-256 fingerprint, in hex."""
    return _short(cert.fingerprint(hashes.SHA256()))


def subject_key_id(cert: x509.Certificate) -> Optional[str]:
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    return _short(ski.digest)


def authority_key_id(cert: x509.Certificate) -> Optional[str]:
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    return _short(aki.key_identifier) if aki.key_identifier else None


def _covers(sans: Sequence[str], name: str) -> bool:
    """Does one of our SANs ("DNS:x", "IP:x") cover `name` (one left-most wildcard)?"""
    wanted = name.rstrip(".").lower()
    for san in sans:
        kind, _, value = san.partition(":")
        value = value.rstrip(".").lower()
        if kind == "IP" and value == wanted:
            return True
        if kind == "DNS" and (value == wanted or (
                value.startswith("*.") and wanted.partition(".")[2] == value[2:])):
            return True
    return False


def server_facts(certfile: str, leaf: x509.Certificate, sans: Sequence[str],
                 client_cas: Sequence[x509.Certificate], crl_file: Optional[str],
                 min_version: str, max_version: Optional[str]) -> ServerFacts:
    """The `ServerFacts` of a context built from these files (called by context.py)."""
    return ServerFacts(certfile=certfile, not_after=leaf.not_valid_after_utc,
                       sans=tuple(sans), issuer=leaf.issuer.rfc4514_string(),
                       issuer_key_id=authority_key_id(leaf),
                       client_cas=tuple(CALabel.from_x509(ca) for ca in client_cas),
                       crl_file=crl_file, min_version=min_version, max_version=max_version)

