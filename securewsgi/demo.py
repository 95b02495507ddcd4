"""A demo app that answers with what it was told about the request and the caller.

`securewsgi-run --config etc/service.yaml` serves it, so a newcomer sees mutual TLS
work in a minute: `curl --cacert etc/pki/ca.pem --cert etc/pki/alice.pem --key
etc/pki/alice-key.pem https://localhost:8443/` shows alice's certificate subject.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Callable

_TLS_KEYS = ("wsgi.url_scheme", "HTTPS", "SSL_PROTOCOL", "SSL_CIPHER", "SSL_TLS_SNI",
             "SSL_CLIENT_VERIFY", "REMOTE_USER")


def app(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
    peer = environ.get("securewsgi.peer")
    answer: dict[str, Any] = {
        "method": environ.get("REQUEST_METHOD"),
        "path": environ.get("PATH_INFO"),
        "remote_addr": environ.get("REMOTE_ADDR"),
        "tls": {key: environ[key] for key in _TLS_KEYS if key in environ},
        "client": None,
    }
    if peer is not None:
        answer["client"] = {
            "subject": peer.subject,
            "common_name": peer.common_name,
            "issuer": peer.issuer,
            "serial": peer.serial_hex,
            "not_after": peer.not_after.isoformat(),
            "san_dns": list(peer.san_dns),
            "san_uri": list(peer.san_uri),
            "san_email": list(peer.san_email),
            "san_ip": list(peer.san_ip),
            "fingerprint_sha256": peer.fingerprint_sha256,
            "source": peer.source,
        }
    body = json.dumps(answer, indent=2).encode() + b"\n"
    headers: list[Any] = [("Content-Type", "application/json"),
                          ("Content-Length", str(len(body)))]
    start_response("200 OK", headers)
    return [body]


def app_factory(global_conf: dict[str, Any], **local_conf: Any) -> Callable:
    """Paste Deploy `paste.app_factory` for the demo app (used by etc/api-paste.ini)."""
    return app
