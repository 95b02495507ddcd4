"""The errors securewsgi raises on purpose, and the two ways it refuses to run.

Every exception class of the package derives from `SecureWSGIError`; `ConfigError`
and `StartupError` are the two ways it refuses to run, each mapped to one exit code.

Every message is a single line that names where the problem is (file and key) and
what it is, because operators read these in a systemd journal, not in a debugger.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


class SecureWSGIError(Exception):
    """The base of every securewsgi error: catch this to catch every error securewsgi
    raises on purpose.

    Each subclass keeps the standard base it had before this one existed (a
    `PathError` is still a `ValueError`), so existing ``except ValueError`` code
    still catches it."""


class ConfigError(SecureWSGIError):
    """The configuration (or a file it names) is unusable: exit code 2."""

    exit_code = 2

    def __init__(
        self, source: Optional[Union[str, Path]], key: Optional[str], message: str
    ) -> None:
        self.source = str(source) if source is not None else None
        self.key = key
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [p for p in (self.source, self.key) if p]
        return ": ".join([*parts, self.message])


class StartupError(SecureWSGIError):
    """The configuration is valid but the machine refuses it (port in use): exit 1."""

    exit_code = 1
