"""Request paths as the application will route them, so that rules cannot be bypassed.

Authorization rules name paths (``/admin/*``); an attacker names them differently
(``//admin``, ``/./admin``, ``/x/../admin``, ``/%61dmin``, ``/admin%2Fx``) and hopes
that the rule sees one path while the application routes another.  The answer here is
to judge exactly one path and make the application route that same path:

* ambiguous requests are refused (`PathError` -> 400) before any rule runs: an encoded
  slash (``%2F``), an encoded or literal backslash, a control character (C0, i.e.
  0x00-0x1F, or DEL 0x7F; literal or encoded such as ``%00``, ``%0a``, ``%09``), a
  percent sign that still encodes something after decoding (``%2561`` -> ``%61``: an
  application that decodes twice would route another path), a ``..`` that climbs
  above the root, and a path that does not start with ``/`` (``*``, absolute-form
  ``http://host/x``);
* everything else is normalised (``//`` collapsed, ``.`` and ``..`` resolved, a
  trailing slash kept) and ``PATH_INFO`` is *rewritten* to the normalised path (and
  ``RAW_PATH_INFO`` to its percent-encoded form), so the application routes what was
  judged.

PEP 3333 servers (eventlet included: ``urllib.parse.unquote(raw, encoding="latin1")``)
put the percent-*decoded* path in ``PATH_INFO``, so ``/%61dmin`` already arrives as
``/admin``; the raw path is only needed to see encoded slashes, and is read from
``RAW_PATH_INFO`` (eventlet), ``RAW_URI`` (gunicorn) or ``REQUEST_URI`` (uWSGI,
mod_wsgi), whichever is present.

The common, already-normal path costs a handful of substring tests.
"""
from __future__ import annotations

import re
import urllib.parse
from typing import Any, Optional

from ..errors import SecureWSGIError

__all__ = ["ORIGINAL_PATH_KEY", "PathError", "check_raw_path", "judge_path", "normalise_path"]

ORIGINAL_PATH_KEY = "securewsgi.original_path"
"""environ key holding the path as the client sent it, when `judge_path` rewrote it."""


class PathError(SecureWSGIError, ValueError):
    """The path is ambiguous or escapes the root: the request is refused with 400."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


# A percent sign that still encodes a byte after the server decoded the path once.
_STILL_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")
# Raw (undecoded) sequences whose decoded form would change how a path splits.
_RAW_FORBIDDEN = (("%2f", "an encoded slash (%2F)"),
                  ("%5c", "an encoded backslash (%5C)"),
                  ("%00", "an encoded NUL (%00)"))
# An encoded C0 control character or DEL (%00-%1F, %7F).
_RAW_CONTROL = re.compile(r"%(?:[01][0-9A-Fa-f]|7[Ff])")
# A decoded C0 control character or DEL. No legitimate path holds one, and layers read
# it differently: a rule for "/admin" does not match "/admin\n", but an application
# routing with re.match(r"^/admin$") does ("$" also matches before a final newline);
# echoed into a Location header or a log line it splits the response or forges a line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# RFC 3986 pchar minus "%": what RAW_PATH_INFO may carry unencoded.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def check_raw_path(raw: str) -> None:
    """Refuse a raw request path holding an encoded slash, backslash or control
    character."""
    if "%" not in raw:
        return
    lowered = raw.lower()
    for needle, what in _RAW_FORBIDDEN:
        if needle in lowered:
            raise PathError(f"path contains {what}")
    match = _RAW_CONTROL.search(raw)
    if match:
        raise PathError(f"path contains an encoded control character ({match.group()})")


def _control_character(path: str) -> Optional[str]:
    """The first C0 control character or DEL in `path`, or None.

    `str.isprintable` (one C loop) clears the usual path; only a path with something
    unprintable -- a control character, or a latin-1 character such as U+0080-U+00A0
    that UTF-8 bytes decode to -- pays for the regular expression.
    """
    if path.isprintable():
        return None
    match = _CONTROL.search(path)
    return match.group() if match else None


def _needs_work(path: str) -> bool:
    """False for a path that `normalise_path` would return unchanged (the fast path)."""
    return (
        path[:1] != "/"
        or "//" in path
        or "/." in path  # "/./", "/../", a trailing "/." or "/..", but also "/.well-known"
        or "\\" in path
        or "%" in path
        or not path.isprintable()  # C0 controls, DEL (and harmless non-ASCII: slow path)
    )


def normalise_path(path: str) -> str:
    """The decoded path as the application should route it, or `PathError`.

    ``""`` stays ``""`` (PEP 3333: the request is for the mount point itself).
    Idempotent: ``normalise_path(normalise_path(p)) == normalise_path(p)``.
    """
    if not path:
        return path
    if not _needs_work(path):
        return path
    if path[0] != "/":
        raise PathError("path does not start with '/'")
    if "\x00" in path:
        raise PathError("path contains a NUL")
    control = _control_character(path)
    if control is not None:
        raise PathError(f"path contains a control character (0x{ord(control):02X})")
    if "\\" in path:
        raise PathError("path contains a backslash")
    if "%" in path and _STILL_ENCODED.search(path):
        raise PathError("path is percent-encoded twice")
    segments = []
    trailing = False
    for segment in path.split("/")[1:]:
        trailing = False
        if segment == "" or segment == ".":
            trailing = True
        elif segment == "..":
            if not segments:
                raise PathError("path climbs above the root ('..')")
            segments.pop()
            trailing = True
        else:
            segments.append(segment)
    if not segments:
        return "/"
    return "/" + "/".join(segments) + ("/" if trailing else "")


def _raw_path(environ: dict[str, Any]) -> Optional[str]:
    raw = environ.get("RAW_PATH_INFO")
    if raw is None:
        uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        if not uri:
            return None
        raw = uri.split("?", 1)[0]
    return raw if isinstance(raw, str) else None


def _quote(path: str) -> str:
    """Percent-encode a decoded path the way eventlet decoded it (latin-1 bytes)."""
    try:
        return urllib.parse.quote(path, safe=_PATH_SAFE, encoding="latin-1")
    except UnicodeEncodeError:  # a server that decoded as UTF-8, against PEP 3333
        return urllib.parse.quote(path, safe=_PATH_SAFE, encoding="utf-8")


def judge_path(environ: dict[str, Any]) -> str:
    """Check and normalise the request path in place; return SCRIPT_NAME + PATH_INFO.

    Raises `PathError` for the refused forms listed in the module docstring. When the
    normalised path differs from ``PATH_INFO``, ``PATH_INFO`` is replaced by it,
    ``RAW_PATH_INFO`` (if present) by its percent-encoded form, and the path as sent
    is kept in ``environ[ORIGINAL_PATH_KEY]``.
    """
    path = environ.get("PATH_INFO", "")
    raw = _raw_path(environ)
    if raw is not None:
        check_raw_path(raw)
    script = environ.get("SCRIPT_NAME", "")
    if path and _needs_work(path):
        normal = normalise_path(path)
        if normal != path:
            # what the client sent, for access logs (set only when something changed)
            environ[ORIGINAL_PATH_KEY] = raw if raw is not None else path
            environ["PATH_INFO"] = path = normal
            if "RAW_PATH_INFO" in environ:
                environ["RAW_PATH_INFO"] = _quote(script + normal)
    if script:
        if script.endswith("/"):
            script = script.rstrip("/")
        return (script + path) or "/"
    return path or "/"
