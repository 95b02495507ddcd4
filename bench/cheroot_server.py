"""cheroot (CherryPy's WSGI server) with its builtin SSL adapter requiring client certs.

`BuiltinSSLAdapter(cert, key, certificate_chain=ca)` loads `ca` as trusted CAs but
builds its context with `ssl.create_default_context(Purpose.CLIENT_AUTH)`, whose
`verify_mode` is CERT_NONE: without the line below cheroot would accept any client.
Threads stay at cheroot's default (10); the idle timeout is raised like every other
target's so the idle-capacity test measures capacity, not timeout policy.

Run by the harness as ``python bench/cheroot_server.py --port P --certfile ...``.
"""
from __future__ import annotations

import argparse
import signal
import ssl
import sys
from typing import Any

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter
from hello import app


def build_server(args: argparse.Namespace) -> wsgi.Server:
    """A cheroot server whose TLS context refuses clients without a valid certificate."""
    server = wsgi.Server((args.host, args.port), app, timeout=args.timeout)
    adapter = BuiltinSSLAdapter(args.certfile, args.keyfile, certificate_chain=args.ca_certs)
    adapter.context.verify_mode = ssl.CERT_REQUIRED
    adapter.context.num_tickets = 0  # as every target of the benchmark (no session tickets)
    server.ssl_adapter = adapter
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--certfile", required=True)
    parser.add_argument("--keyfile", required=True)
    parser.add_argument("--ca-certs", required=True)
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="cheroot's socket timeout (idle keep-alive, handshake)")
    args = parser.parse_args(argv)
    server = build_server(args)

    def stop(_signum: int, _frame: Any) -> None:
        # server.stop() here would join the worker threads from inside the serving
        # thread and hang; leave serve() instead and stop in the finally below.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    server.prepare()
    print(f"listening on https://{args.host}:{server.bind_addr[1]}", file=sys.stderr,
          flush=True)
    try:
        server.serve()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
