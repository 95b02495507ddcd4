"""Logging set-up: the error log on stderr as text or JSON lines (`logging.format`),
or as the site's own `logging.config_file` says; and `wsgi.errors`, which goes through
the same error log.

The access log does not go through `logging` (see server/accesslog.py).

Kept apart from the code that logs, so every module just uses `logging.getLogger`.
"""
from __future__ import annotations

import configparser
import json
import logging
import logging.config
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .config import LoggingConfig
from .config.loader import INI_SUFFIXES, yaml_error_text
from .errors import ConfigError

DICT_CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def _iso_time(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + (
        f".{int(created % 1 * 1000):03d}Z")


class TextFormatter(logging.Formatter):
    """`2026-11-29T02:26:09.123Z INFO securewsgi.server message`."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_iso_time(record.created)} {record.levelname} {record.name} " \
               f"{record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


# What every LogRecord has; anything else on a record came from `extra=`.
_RECORD_KEYS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exception), plus
    the fields a caller passed with `extra=` (a refused handshake's client, reason,
    certificate and hint), each as its own key."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_KEYS and not key.startswith("_"):
                data.setdefault(key, value)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def setup_logging(config: LoggingConfig) -> None:
    """Configure the `securewsgi` loggers (idempotent: safe to call again in a worker).

    With `logging.config_file`, that file alone decides handlers, formats and levels:
    securewsgi then installs nothing of its own, and an error in the file is a
    `ConfigError` naming `logging.config_file`.
    """
    root = logging.getLogger("securewsgi")
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    if config.config_file is not None:
        # Back to a plain logger (as before any set-up) for the file to configure.
        root.setLevel(logging.NOTSET)
        root.propagate = True
        apply_logging_file(config.config_file)
        return
    root.setLevel(config.level)
    root.propagate = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    root.addHandler(handler)


LoggingFile = Union[dict, configparser.ConfigParser]


def read_logging_file(path: Path) -> LoggingFile:
    """Parse a logging configuration and check its shape, without applying it.

    The suffix decides the form: .yaml/.yml/.json is `logging.config.dictConfig`'s
    dictionary, .ini/.conf/.cfg is `logging.config.fileConfig`'s INI. Raises
    ValueError with a short cause, so the config loader can name the key.
    """
    suffix = path.suffix.lower()
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read: {exc}") from None
    if suffix in DICT_CONFIG_SUFFIXES:
        return _read_dict_config(content)
    if suffix in INI_SUFFIXES:
        return _read_file_config(path, content)
    raise ValueError("unknown file type: name it .yaml/.yml/.json (logging.config."
                     "dictConfig) or .ini/.conf/.cfg (logging.config.fileConfig)")


def _read_dict_config(content: str) -> dict:
    try:
        data = yaml.safe_load(content)
    except yaml.YAMLError as exc:
        raise ValueError(yaml_error_text(exc)) from None
    if not isinstance(data, dict):
        raise ValueError("expected a logging.config.dictConfig mapping (with version: 1)")
    if data.get("version") != 1:
        raise ValueError(f"dictConfig needs 'version: 1', got {data.get('version')!r}")
    for key in ("formatters", "filters", "handlers", "loggers", "root"):
        if key in data and not isinstance(data[key], dict):
            raise ValueError(f"{key}: expected a mapping, got {data[key]!r}")
    return data


def _read_file_config(path: Path, content: str) -> configparser.ConfigParser:
    # As in Paste Deploy files, so a Paste INI's own [loggers] sections can be named.
    parser = configparser.ConfigParser(defaults={"here": str(path.parent),
                                                 "__file__": str(path)})
    try:
        parser.read_string(content, source=str(path))
    except configparser.Error as exc:
        raise ValueError(f"invalid INI: {str(exc).splitlines()[0]}") from None
    for section in ("loggers", "handlers", "formatters"):
        if not parser.has_option(section, "keys"):
            raise ValueError(f"fileConfig needs a [{section}] section with 'keys ='")
    loggers = [name.strip() for name in parser.get("loggers", "keys").split(",")]
    if "root" not in loggers:
        raise ValueError("fileConfig needs 'root' in [loggers] keys (and a [logger_root])")
    return parser


def apply_logging_file(path: Path) -> None:
    """Apply a logging configuration file; its errors become one-line `ConfigError`s.

    Loggers the file does not name stay enabled (`disable_existing_loggers` is false
    unless a dictConfig file says otherwise): securewsgi's module loggers exist before
    the file is read, and silencing them by omission would hide refused handshakes and
    failed reloads.
    """
    try:
        parsed = read_logging_file(path)
        if isinstance(parsed, dict):
            parsed.setdefault("disable_existing_loggers", False)
            logging.config.dictConfig(parsed)
        else:
            logging.config.fileConfig(parsed, disable_existing_loggers=False)
    except Exception as exc:  # the logging module raises many kinds for one bad entry
        raise ConfigError(None, "logging.config_file", f"{path}: {_cause(exc)}") from None


def _cause(exc: BaseException) -> str:
    """`Unable to configure handler 'file': [Errno 2] No such file ...`: dictConfig
    wraps the real error, which is the part an operator can act on."""
    parts: list[str] = []
    while exc is not None and len(parts) < 3:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, KeyError):
            text = f"no such entry {text}"
        if not any(text in part for part in parts):  # causes often repeat their cause
            parts.append(text)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return ": ".join(parts)


class ErrorsStream:
    """`wsgi.errors`: what the app writes becomes records of the `securewsgi.app`
    logger at ERROR (the stream exists for errors), one per line, so it lands where the
    error log goes and in its format (text, JSON, or the site's logging config file)
    instead of interleaving raw text with log lines on stderr.

    Partial lines are buffered per thread (per greenthread under eventlet's monkey
    patching: the buffer is created at the first write, after patching), so the
    threads engine's concurrent requests never splice each other's lines. A partial
    line that grows past `max_line` characters is emitted as it is, bounding the buffer.
    """

    def __init__(self, logger: logging.Logger, level: int = logging.ERROR,
                 max_line: int = 65536) -> None:
        self.logger = logger
        self.level = level
        self.max_line = max_line
        self._local: Optional[threading.local] = None
        self._create_lock = threading.Lock()

    def _pending(self) -> threading.local:
        """This thread's partial line (`parts`, `size`)."""
        local = self._local
        if local is None:
            with self._create_lock:
                if self._local is None:
                    self._local = threading.local()
                local = self._local
        if not hasattr(local, "parts"):
            local.parts, local.size = [], 0
        return local

    def write(self, data: Union[str, bytes]) -> int:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        pending = self._pending()
        *complete, tail = text.split("\n")
        for line in complete:
            pending.parts.append(line)
            self._emit_pending(pending)
        if tail:
            pending.parts.append(tail)
            pending.size += len(tail)
            if pending.size >= self.max_line:
                self._emit_pending(pending)
        return len(data)

    def writelines(self, lines: Iterable[Union[str, bytes]]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Emit a pending partial line: the app asked for what it wrote to be seen."""
        pending = self._pending()
        if pending.parts:
            self._emit_pending(pending)

    def _emit_pending(self, pending: threading.local) -> None:
        self._emit("".join(pending.parts))
        pending.parts, pending.size = [], 0

    def _emit(self, line: str) -> None:
        line = line.rstrip("\r")
        if line:
            self.logger.log(self.level, "%s", line)


# One per process: the engines put it into every request's environ.
WSGI_ERRORS = ErrorsStream(logging.getLogger("securewsgi.app"))


class RateLimitedLog:
    """A token bucket in front of a logger, for lines a client can trigger at will
    (refused handshakes): a flood must not fill the disk, yet the operator must learn
    how much was dropped. `flush()` (called periodically) reports the count."""

    def __init__(self, logger: logging.Logger, rate: float = 10.0, burst: int = 100,
                 clock: Any = time.monotonic) -> None:
        self.logger = logger
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.updated = clock()
        self.suppressed = 0

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            self.suppressed += 1
            return
        self.tokens -= 1
        self.flush()
        self.logger.info(msg, *args, **kwargs)

    def flush(self) -> None:
        if self.suppressed:
            count, self.suppressed = self.suppressed, 0
            self.logger.warning("%d similar line(s) suppressed (more than %g per second)",
                                count, self.rate)
