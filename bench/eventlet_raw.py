"""The server securewsgi replaces: `eventlet.wsgi.server` on a TLS listening socket.

This is the boilerplate OpenStack-style services carry today, written *correctly*
so the comparison is fair to it: a `PROTOCOL_TLS_SERVER` context with
`CERT_REQUIRED` (`eventlet.wrap_ssl(cert_reqs=...)` would silently not require
client certificates: it ORs `cert_reqs` into the context options and leaves
`verify_mode` at CERT_NONE) made green by building it from `eventlet.green.ssl` (a
plain stdlib context would block the whole process in accept and handshakes),
wrapped around the listening socket, and eventlet's defaults for everything else (a pool of 1024
greenthreads, the handshake deferred to each connection's first read). The access
log goes to a file, as securewsgi's does in the benchmark.

Run by the harness as ``python bench/eventlet_raw.py --port P --certfile ... ``.
"""
from __future__ import annotations

import argparse
import sys
import warnings

with warnings.catch_warnings():  # `import eventlet` warns that eventlet is deprecated
    warnings.simplefilter("ignore")
    import eventlet
    import eventlet.wsgi
    from eventlet.green import ssl

from hello import app


def tls_context(certfile: str, keyfile: str, ca_certs: str) -> ssl.SSLContext:
    """A green server context that really requires a client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # eventlet's GreenSSLContext
    context.load_cert_chain(certfile, keyfile)
    context.load_verify_locations(ca_certs)
    context.verify_mode = ssl.CERT_REQUIRED
    context.num_tickets = 0  # as every target of the benchmark (targets.NGINX_NO_TICKETS)
    return context


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--certfile", required=True)
    parser.add_argument("--keyfile", required=True)
    parser.add_argument("--ca-certs", required=True)
    parser.add_argument("--access-log", required=True, help="file the access lines go to")
    args = parser.parse_args(argv)
    eventlet.monkey_patch()  # what services do first, and what securewsgi does by default
    listener = eventlet.listen((args.host, args.port), reuse_port=False)
    sock = tls_context(args.certfile, args.keyfile, args.ca_certs).wrap_socket(
        listener, server_side=True)
    print(f"listening on https://{args.host}:{sock.getsockname()[1]}", file=sys.stderr,
          flush=True)
    with open(args.access_log, "a", buffering=1, encoding="utf-8") as access_log:
        eventlet.wsgi.server(sock, app, log=access_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
