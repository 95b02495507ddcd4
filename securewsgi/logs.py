"""Logging set-up: the error log on stderr as text or JSON lines (`logging.format`).

The access log does not go through `logging` (see accesslog.py).

Kept apart from the code that logs, so every module just uses `logging.getLogger`.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from .config import LoggingConfig


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
    """One JSON object per line: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def setup_logging(config: LoggingConfig) -> None:
    """Configure the `securewsgi` loggers (idempotent: safe to call again in a worker)."""
    root = logging.getLogger("securewsgi")
    root.setLevel(config.level)
    root.propagate = False
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    root.addHandler(handler)


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
