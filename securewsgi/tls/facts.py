"""What a finished TLS handshake tells the application, computed once per connection.

The engine calls `connection_environ` right after the handshake and merges the result
into the environ of every request on that connection. It is engine-neutral: it only
needs the `ssl.SSLSocket` / `ssl.SSLObject` interface.
"""
from __future__ import annotations

import datetime
import functools
from typing import Any, Optional

from ..errors import SecureWSGIError
from .peer import PeerIdentity

TLS_PEER_KEY = "securewsgi.tls_peer"
"""environ key of the `PeerIdentity` verified by *our* handshake (or None).

The identity middleware reads it; it is the only hand-off between server and
middleware, so a header can never reach it (header keys all start with HTTP_).
"""


class ResumedPeerRefused(SecureWSGIError, ValueError):
    """A resumed TLS session carries a client certificate that is no longer valid."""


PROXIED_BY_KEY = "securewsgi.proxied_by"
"""environ key set (to the proxy's address) when a PROXY protocol header announced the
client address: the connection is passed through a TCP proxy, so every HTTP header on
it was written by the client itself, and none may vouch for another identity."""


def connection_environ(tls_socket: Any, revoked: frozenset = frozenset()) -> dict[str, Any]:
    """TLS facts for environ: scheme, protocol, cipher, SNI and the verified peer.

    A resumed session skips OpenSSL's certificate checks: the certificate that was
    valid when the ticket was issued is taken on trust for the ticket's lifetime. So
    for resumed sessions the validity period and the CRL (`revoked`) are checked here;
    `ResumedPeerRefused` ends the connection like a failed handshake.
    """
    cipher = tls_socket.cipher()
    env: dict[str, Any] = {
        "wsgi.url_scheme": "https",
        "HTTPS": "on",
        "SSL_PROTOCOL": tls_socket.version() or "",
        "SSL_CIPHER": cipher[0] if cipher else "",
    }
    server_name: Optional[str] = getattr(tls_socket, "securewsgi_sni", None)
    if server_name:
        env["SSL_TLS_SNI"] = server_name
    der = tls_socket.getpeercert(binary_form=True)
    # The context verified this certificate during the handshake (CERT_OPTIONAL or
    # CERT_REQUIRED); with CERT_NONE OpenSSL never asks for one, so der is None.
    peer = _peer_identity(der) if der else None
    if peer is not None and tls_socket.session_reused:
        _check_resumed_peer(peer, revoked)
    env[TLS_PEER_KEY] = peer
    return env


@functools.lru_cache(maxsize=4096)
def _peer_identity(der: bytes) -> PeerIdentity:
    """Parsed once per distinct certificate, not per connection: clients reconnect
    with the same certificate, and a shared immutable object also saves memory per
    held connection. (Validity is still checked per connection by OpenSSL, or below
    for resumed sessions.)"""
    return PeerIdentity.from_der(der, source="tls")


def _check_resumed_peer(peer: PeerIdentity, revoked: frozenset) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    if now > peer.not_after:
        raise ResumedPeerRefused("client certificate expired (resumed session refused)")
    if now < peer.not_before:
        raise ResumedPeerRefused("client certificate not yet valid (resumed session refused)")
    if (peer.issuer, peer.serial) in revoked:
        raise ResumedPeerRefused("client certificate revoked (resumed session refused)")


def plain_environ() -> dict[str, Any]:
    """tls.mode none: say so explicitly rather than leave the keys undefined."""
    return {"wsgi.url_scheme": "http", TLS_PEER_KEY: None}


def handshake_failure_reason(exc: BaseException) -> str:
    """One plain sentence for a failed server-side handshake (`refusals.explain` has
    the whole story: the client's certificate, the fix, OpenSSL's own words)."""
    from .refusals import explain  # refusals imports this module

    return explain(exc).reason
