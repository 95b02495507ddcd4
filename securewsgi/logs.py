"""Logging set-up: the error log on stderr, the access log where `logging.access_log`
says, each as text or JSON lines per `logging.format`.

Kept apart from the code that logs, so every module just uses `logging.getLogger`.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

from .config import LoggingConfig

ACCESS_LOGGER = "securewsgi.access"
# The fields an access record carries (set as `extra=` by accesslog.py).
ACCESS_FIELDS = ("client", "cn", "tls", "method", "path", "protocol", "status", "bytes",
                 "duration")


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


class JsonFormatter(logging.Formatter):
    """One JSON object per line; access records carry their fields as keys."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
        }
        if record.name == ACCESS_LOGGER:
            for name in ACCESS_FIELDS:
                data[name] = getattr(record, name, None)
        else:
            data["message"] = record.getMessage()
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


class AccessTextFormatter(logging.Formatter):
    """`2026-11-29T02:26:09.123Z 127.0.0.1:5050 alice TLSv1.3 "GET / HTTP/1.1" 200 13 0.0012`"""

    def format(self, record: logging.LogRecord) -> str:
        r: Any = record
        return (f'{_iso_time(record.created)} {r.client} {r.cn} {r.tls} '
                f'"{r.method} {r.path} {r.protocol}" {r.status} {r.bytes} {r.duration:.4f}')


def setup_logging(config: LoggingConfig) -> None:
    """Configure the `securewsgi` loggers (idempotent: safe to call again in a worker)."""
    json_lines = config.format == "json"
    root = logging.getLogger("securewsgi")
    root.setLevel(config.level)
    root.propagate = False
    _replace_handlers(root, logging.StreamHandler(sys.stderr),
                      JsonFormatter() if json_lines else TextFormatter())
    access = logging.getLogger(ACCESS_LOGGER)
    access.propagate = False
    access.setLevel(logging.INFO)
    handler = _access_handler(config.access_log)
    if handler is None:
        access.disabled = True
        _replace_handlers(access, None, None)
    else:
        access.disabled = False
        _replace_handlers(access, handler,
                          JsonFormatter() if json_lines else AccessTextFormatter())


def _access_handler(target: Any) -> Optional[logging.Handler]:
    if target is None:
        return None
    if target == "-":
        return logging.StreamHandler(sys.stdout)
    if target == "stderr":
        return logging.StreamHandler(sys.stderr)
    return logging.FileHandler(Path(target), encoding="utf-8")


def _replace_handlers(logger: logging.Logger, handler: Optional[logging.Handler],
                      formatter: Optional[logging.Formatter]) -> None:
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    if handler is not None and formatter is not None:
        handler.setFormatter(formatter)
        logger.addHandler(handler)


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

    def info(self, msg: str, *args: Any) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            self.suppressed += 1
            return
        self.tokens -= 1
        self.flush()
        self.logger.info(msg, *args)

    def flush(self) -> None:
        if self.suppressed:
            count, self.suppressed = self.suppressed, 0
            self.logger.warning("%d similar line(s) suppressed (more than %g per second)",
                                count, self.rate)
