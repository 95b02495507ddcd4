"""`securewsgi-run --config FILE [--check]` (also `python -m securewsgi`)."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Optional

from .. import __version__
from ..errors import ConfigError, StartupError

if TYPE_CHECKING:
    from ..config import Config

PROG = "securewsgi-run"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve a WSGI application over TLS or mutual TLS, as FILE describes.",
    )
    parser.add_argument("--config", "-c", required=True, metavar="FILE",
                        help="service file (.yaml/.yml or .ini/.conf/.cfg)")
    parser.add_argument("--check", action="store_true",
                        help="validate the configuration, certificates and app; serve nothing")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help is 0, a usage error is 2
        return int(exc.code or 0)
    from ..config import load_config

    try:
        config = load_config(args.config)
        if args.check:
            return _check(config)
        from ..server import serve

        return serve(config)
    except (ConfigError, StartupError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0


def _check(config: Config) -> int:
    from ..server import plain_http_warnings, prepare, summary_lines

    tls, _app = prepare(config)
    print(f"config: {config.source}")
    for line in summary_lines(config, tls, config.server.port):
        print(line.replace("listening on", "would listen on"))
    for warning in tls.warnings + tuple(plain_http_warnings(config)):
        print(f"warning: {warning}")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
