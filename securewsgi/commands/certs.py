"""``securewsgi-certs``: create and manage a development PKI (see :mod:`securewsgi.pki`).

Only argument parsing and output live here.  Every failure becomes one line on
stderr, ``securewsgi-certs: <cause naming the file>``, and exit status 2.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from securewsgi import __version__, pki

PROG = "securewsgi-certs"
EXIT_OK = 0
EXIT_ERROR = 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Create a development PKI for securewsgi (not for production).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    _add_init(commands)
    _add_issue(commands)
    _add_revoke(commands)
    return parser


def _add_init(commands: argparse._SubParsersAction) -> None:
    init = commands.add_parser(
        "init", help="create a CA, a server certificate, client certificates and a CRL")
    init.add_argument("directory", metavar="DIR", type=Path)
    init.add_argument("--host", action="append", default=[], metavar="NAME",
                      help="extra server SAN (DNS name or IP address); repeatable."
                           " localhost, 127.0.0.1 and ::1 are always included")
    init.add_argument("--client", action="append", default=[], metavar="NAME",
                      help="issue NAME.pem/NAME-key.pem with CN=NAME; repeatable")
    init.add_argument("--key-type", choices=pki.KEY_TYPES, default="ecdsa-p256")
    existing = init.add_mutually_exclusive_group()
    existing.add_argument("--force", action="store_true",
                          help="overwrite existing files (creates a new CA)")
    existing.add_argument("--exist-ok", action="store_true",
                          help="do nothing and exit 0 when DIR/ca.pem already exists")


def _add_issue(commands: argparse._SubParsersAction) -> None:
    issue = commands.add_parser("issue", help="issue one more client certificate")
    issue.add_argument("directory", metavar="DIR", type=Path)
    issue.add_argument("--client", required=True, metavar="NAME")
    issue.add_argument("--san-uri", action="append", default=[], metavar="URI")
    issue.add_argument("--san-dns", action="append", default=[], metavar="NAME")
    issue.add_argument("--san-email", action="append", default=[], metavar="ADDR")
    issue.add_argument("--key-type", choices=pki.KEY_TYPES, default=None,
                       help="default: the CA's key type")
    issue.add_argument("--force", action="store_true",
                       help="overwrite NAME.pem/NAME-key.pem if they exist")


def _add_revoke(commands: argparse._SubParsersAction) -> None:
    revoke = commands.add_parser("revoke", help="revoke a client certificate (rewrites crl.pem)")
    revoke.add_argument("directory", metavar="DIR", type=Path)
    revoke.add_argument("name", metavar="NAME")


def _q(path: Path) -> str:
    return shlex.quote(str(path))


def _curl_hint(directory: Path, client: str | None) -> str:
    cert = ""
    if client is not None:
        cert = (f" --cert {_q(directory / (client + '.pem'))}"
                f" --key {_q(directory / (client + '-key.pem'))}")
    return f"  client: curl --cacert {_q(directory / pki.CA_FILE)}{cert} https://localhost:8443/"


def _run_init(args: argparse.Namespace) -> int:
    directory: Path = args.directory
    if args.exist_ok and (directory / pki.CA_FILE).exists():
        print(f"keeping the existing PKI in {directory} ({directory / pki.CA_FILE} exists)")
        for client in args.client:
            if not (directory / f"{client}.pem").exists():
                # --exist-ok keeps the whole PKI, the CA included: nothing new is made
                name = shlex.quote(client)
                print(f"{PROG}: the CA exists, so nothing was created for client {name};"
                      f" to issue it: {PROG} issue {_q(directory)} --client {name}",
                      file=sys.stderr)
        return EXIT_OK
    written = pki.init_pki(directory, hosts=args.host, clients=args.client,
                           key_type=args.key_type, force=args.force)
    for path in written:
        print(f"wrote {path}")
    print(f"  server: tls.certfile={_q(directory / pki.SERVER_FILE)}"
          f" tls.keyfile={_q(directory / pki.SERVER_KEY_FILE)}"
          f" tls.ca_certs={_q(directory / pki.CA_FILE)}"
          f" tls.crl_file={_q(directory / pki.CRL_FILE)}")
    print(_curl_hint(directory, args.client[0] if args.client else None))
    return EXIT_OK


def _run_issue(args: argparse.Namespace) -> int:
    written = pki.issue_client_files(
        args.directory, args.client, san_uri=args.san_uri, san_dns=args.san_dns,
        san_email=args.san_email, key_type=args.key_type, force=args.force)
    for path in written:
        print(f"wrote {path}")
    print(_curl_hint(args.directory, args.client))
    return EXIT_OK


def _run_revoke(args: argparse.Namespace) -> int:
    crl_path = pki.revoke(args.directory, args.name)
    print(f"wrote {crl_path}")
    print("  a running securewsgi server with tls.crl_file pointing here re-reads it on"
          " SIGHUP (kill -HUP <pid>)")
    return EXIT_OK


_RUNNERS = {"init": _run_init, "issue": _run_issue, "revoke": _run_revoke}


def _describe_os_error(exc: OSError) -> str:
    """``file: cause`` in one line, without Python's ``[Errno n]`` prefix."""
    cause = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{exc.filename}: {cause}"
    return cause


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``securewsgi-certs``; returns the exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    try:
        return _RUNNERS[args.command](args)
    except pki.PKIError as exc:
        message = str(exc)
    except OSError as exc:
        message = _describe_os_error(exc)
    print(f"{PROG}: {' '.join(message.splitlines())}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
