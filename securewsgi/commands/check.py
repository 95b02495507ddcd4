"""``securewsgi-check URL``: connect as a client and explain the TLS result in plain words.

Only argument parsing and output (the text report) live here; the checks and the JSON
form are in :mod:`securewsgi.client.diagnose`.

Exit status: 0 when the TLS handshake and the HTTP exchange worked and the status is
below 400; 1 for every other outcome (the report says which step failed, and a 4xx/5xx
is reported as such, TLS facts included); 2 for usage errors (bad URL, unusable
``--ca``/``--cert``/``--key``), printed as one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Optional

from .. import __version__
from ..client.diagnose import (
    DEFAULT_TIMEOUT,
    TLS_VERSIONS,
    Diagnosis,
    UsageError,
    diagnose,
    parse_iso,
)
from ..tls.validity import plural, time_left

PROG = "securewsgi-check"
EXIT_USAGE = 2


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Connect to URL as a TLS client, GET it, and explain every step: "
                    "protocol, cipher, the server's certificate chain, hostname, client "
                    "certificate, HTTP status. Exit 0 when the request succeeded (status "
                    "< 400), 1 otherwise, 2 for usage errors.",
    )
    parser.add_argument("url", metavar="URL",
                        help="https://HOST[:PORT][/PATH] (http:// says what the port speaks)")
    parser.add_argument("--ca", metavar="FILE",
                        help="CA file or directory to verify the server with "
                             "(default: the system trust store)")
    parser.add_argument("--cert", metavar="FILE", help="client certificate (PEM)")
    parser.add_argument("--key", metavar="FILE",
                        help="client private key (PEM); omit when --cert holds it too")
    parser.add_argument("--key-password", metavar="P",
                        help="password of an encrypted --key (visible to local users in ps)")
    parser.add_argument("--timeout", metavar="S", type=_positive_seconds,
                        default=DEFAULT_TIMEOUT,
                        help="seconds for each step: connect, handshake, response "
                             f"(default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--tls-version", choices=sorted(TLS_VERSIONS),
                        help="offer only this TLS version (default: 1.2 and 1.3)")
    parser.add_argument("--json", action="store_true",
                        help="print the facts as one JSON object (its keys: "
                             "docs/source/clients.rst, section \"Checking a connection\")")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``securewsgi-check``; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.key and not args.cert:
        return _usage("--key needs --cert")
    try:
        report = diagnose(args.url, ca=args.ca, certfile=args.cert, keyfile=args.key,
                          key_password=args.key_password, timeout=args.timeout,
                          tls_version=args.tls_version)
    except UsageError as exc:
        return _usage(str(exc))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(render_text(report))
    return report.exit_code


def _usage(message: str) -> int:
    print(f"{PROG}: {' '.join(message.splitlines())}", file=sys.stderr)
    return EXIT_USAGE


# ------------------------------------------------------------------ text output


def _date(iso: str) -> str:
    return iso[:10]  # YYYY-MM-DD of an ISO 8601 timestamp


def _yes_no(value: Optional[bool], yes: str, no: str, unknown: str = "unknown") -> str:
    return unknown if value is None else (yes if value else no)


def render_text(report: Diagnosis) -> str:
    """The human-readable report: one fact per line, then the verdict and the fix."""
    lines = [f"check     {report.url}"]
    if report.address is not None:
        lines.append(f"connect   {report.address} port {report.port}: ok")
    if report.protocol:
        failed = "" if report.handshake_completed else " (handshake failed)"
        lines.append(f"TLS       {report.protocol}, {report.cipher}{failed}")
    lines += _chain_lines(report)
    if report.chain or report.trusted is not None:
        ca = "the system trust store" if report.ca == "system" else report.ca
        trust = _yes_no(report.trusted, f"yes, by {ca}",
                        f"NO, not by {ca}: {report.verify_error}")
        lines.append(f"trusted   {trust}")
        match = _yes_no(report.hostname_match, "matches the certificate",
                        "does NOT match the certificate")
        lines.append(f"hostname  {report.host} {match}")
    if report.protocol or report.client_cert_requested is not None:
        lines.append(f"client    {_client_line(report)}")
    if report.http_status is not None:
        lines.append(f"HTTP      GET {report.path} -> {report.http_status} {report.http_reason}"
                     .rstrip())
    lines += [f"note      {note}" for note in report.notes]
    if report.ok:
        lines.append("result    OK")
    else:
        lines.append(f"result    FAILED: {report.explanation}")
        lines.append(f"fix       {report.fix}")
    return "\n".join(lines)


def _chain_lines(report: Diagnosis) -> list[str]:
    if not report.chain:
        return []
    lines = [f"server    sent {plural(len(report.chain), 'certificate')}:"]
    for i, cert in enumerate(report.chain):
        left = time_left(parse_iso(cert.not_after))
        lines += [f"  [{i}] subject {cert.subject}",
                  f"      issuer  {cert.issuer}"]
        if cert.sans:
            lines.append(f"      SANs    {', '.join(cert.sans)}")
        lines.append(f"      valid   {_date(cert.not_before)} to {_date(cert.not_after)} "
                     f"({left})")
    return lines


def _client_line(report: Diagnosis) -> str:
    if report.client_cert_requested is None:
        asked = "whether the server asks for a certificate is unknown"
    elif not report.client_cert_requested:
        asked = "the server did not ask for a certificate"
    elif report.client_ca_names:
        asked = f"the server asked for a certificate from: {'; '.join(report.client_ca_names)}"
    else:
        asked = "the server asked for a certificate (it named no acceptable CAs)"
    if not report.client_cert_sent:
        if report.client_cert_subject is not None and report.client_cert_requested \
                and not report.handshake_completed:
            return f"{asked}; {report.client_cert_subject} not sent (the handshake ended first)"
        return f"{asked}; none sent"
    verdict = _yes_no(report.client_cert_accepted, "accepted", "REFUSED", "")
    sent = f"sent {report.client_cert_subject}"
    return f"{asked}; {sent}" + (f", {verdict}" if verdict else "")



if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
