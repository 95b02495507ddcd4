"""`securewsgi-run --config FILE [--check | --print-config] [overrides]` (also
`python -m securewsgi`).

Overrides use gunicorn's flag names and go through the same validation as the file:
they are merged into the file's raw sections before `load_config` checks them, and an
error about an overridden key names the flag instead of the file.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .. import __version__
from ..errors import ConfigError, StartupError

if TYPE_CHECKING:
    from ..config import Config

PROG = "securewsgi-run"


@dataclass(frozen=True)
class Override:
    """One command-line flag and the config keys it sets."""

    flag: str
    dest: str
    keys: tuple[str, ...]
    metavar: str
    help: str
    is_path: bool = False


OVERRIDES = (
    Override("--bind", "bind", ("server.host", "server.port"), "HOST:PORT",
             "address to listen on (server.host/port); IPv6 as [::1]:8443"),
    Override("--workers", "workers", ("server.workers",), "N",
             "worker processes (server.workers); 'auto' = CPU count"),
    Override("--certfile", "certfile", ("tls.certfile",), "FILE",
             "server certificate (tls.certfile)", is_path=True),
    Override("--keyfile", "keyfile", ("tls.keyfile",), "FILE",
             "server key (tls.keyfile)", is_path=True),
    Override("--ca-certs", "ca_certs", ("tls.ca_certs",), "FILE",
             "CA file or directory for client certificates (tls.ca_certs)", is_path=True),
    Override("--log-level", "log_level", ("logging.level",), "LEVEL",
             "error-log level (logging.level): DEBUG, INFO, WARNING, ERROR, CRITICAL"),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve a WSGI application over TLS or mutual TLS, as FILE describes.",
        epilog="Overrides replace the file's values and are validated like them; their "
               "paths are relative to the current directory.",
    )
    configuration = parser.add_argument_group("configuration")
    configuration.add_argument("--config", "-c", required=True, metavar="FILE",
                               help="service file (.yaml/.yml or .ini/.conf/.cfg)")
    configuration.add_argument("--version", action="version",
                               version=f"%(prog)s {__version__}")
    overrides = parser.add_argument_group("overrides", "applied over the config file")
    for override in OVERRIDES:
        overrides.add_argument(override.flag, dest=override.dest, metavar=override.metavar,
                               help=override.help)
    overrides.add_argument("--pid", metavar="FILE",
                           help="write the server's PID to FILE once it listens")
    checks = parser.add_argument_group("checks", "do not serve")
    one_check = checks.add_mutually_exclusive_group()
    one_check.add_argument("--check", action="store_true",
                           help="validate the configuration, certificates and app; serve "
                                "nothing")
    one_check.add_argument("--print-config", action="store_true",
                           help="print the effective configuration (YAML, secrets masked) "
                                "and exit")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help is 0, a usage error is 2
        return int(exc.code or 0)
    from ..config import load_config

    try:
        config = load_config(args.config, overrides=overrides_from(args))
        if args.print_config:
            from ..config.dump import dump_config

            sys.stdout.write(dump_config(config))
            return 0
        if args.check:
            return _check(config)
        from ..server import serve

        return serve(config, pid_file=Path(args.pid) if args.pid else None)
    except (ConfigError, StartupError) as exc:
        print(f"{PROG}: {_blame_flag(exc, args)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0


def overrides_from(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The given flags as raw config values ({"server": {"port": "9443"}, ...})."""
    overrides: dict[str, dict[str, Any]] = {}
    for override in OVERRIDES:
        value = getattr(args, override.dest)
        if value is None:
            continue
        if override.flag == "--bind":
            host, port = parse_bind(value)
            values = [host, port]
        elif override.is_path:
            # The operator typed it relative to where they are, not to the file.
            values = [os.path.abspath(os.path.expanduser(value))]
        else:
            values = [value]
        for key, item in zip(override.keys, values):
            section, name = key.split(".", 1)
            overrides.setdefault(section, {})[name] = item
    return overrides


_BIND = re.compile(r"(?:\[(?P<v6>[^\[\]]*)\]|(?P<host>[^:\[\]]+)):(?P<port>[^:\[\]]*)")


def parse_bind(value: str) -> tuple[str, str]:
    """`HOST:PORT` or `[IPV6]:PORT` -> (host, port); the port is validated as
    `server.port` is, so only the shape is checked here."""
    expected = f"expected HOST:PORT (IPv6 as [::1]:8443), got {value!r}"
    match = _BIND.fullmatch(value.strip())
    if match is None or not match.group("port"):
        raise ConfigError(None, "--bind", expected)
    if match.group("v6") is not None:
        try:
            ipaddress.IPv6Address(match.group("v6"))
        except ValueError:
            raise ConfigError(None, "--bind", f"not an IPv6 address in brackets: "
                              f"{match.group('v6')!r}") from None
        return match.group("v6"), match.group("port")
    return match.group("host"), match.group("port")


def _blame_flag(exc: Exception, args: argparse.Namespace) -> str:
    """An error about a key set on the command line names the flag: the file is not
    where the operator would look for the bad value."""
    if not isinstance(exc, ConfigError) or exc.key is None:
        return str(exc)
    for override in OVERRIDES:
        if getattr(args, override.dest) is not None and exc.key in override.keys:
            what = exc.message
            if len(override.keys) > 1:
                what = f"{exc.key.split('.', 1)[1]} {what}"
            return f"{override.flag}: {what}"
    return str(exc)


def _check(config: Config) -> int:
    from ..logs import apply_logging_file
    from ..server import plain_http_warnings, prepare, summary_lines

    if config.logging.config_file is not None:
        apply_logging_file(config.logging.config_file)  # handlers that cannot start
    tls, _app = prepare(config)
    print(f"config: {config.source}")
    for line in summary_lines(config, tls, config.server.port):
        print(line.replace("listening on", "would listen on"))
    if config.logging.config_file is not None:
        print(f"logging: configured by {config.logging.config_file}")
    for warning in tls.warnings + tuple(plain_http_warnings(config)):
        print(f"warning: {warning}")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
