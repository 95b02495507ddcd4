"""Untrusted text made safe to log: the one escaping rule of the package.

A client chooses its request line, its headers and its certificate's names; none of
that may start a new log line, hide characters or pass for an escape sequence.
"""
from __future__ import annotations

from typing import Optional

__all__ = ["printable"]


def printable(value: str, limit: Optional[int] = None) -> str:
    """`value` with every character that `str.isprintable` refuses (line breaks, other
    control characters, format characters such as U+202E, separators other than the
    space) written as a Python escape: ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``. A
    backslash becomes ``\\\\``, so an escape in the result always stands for one
    character. Printable non-ASCII text (``café``) is kept as it is.

    With `limit`, at most that many characters of `value` are kept, followed by
    ``...`` when some were cut.
    """
    cut = limit is not None and len(value) > limit
    if cut:
        value = value[:limit]
    if not value.isprintable() or "\\" in value:
        value = "".join(map(_escape, value))
    return value + "..." if cut else value


def _escape(char: str) -> str:
    if char == "\\":
        return "\\\\"
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
