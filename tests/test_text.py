"""One escaping rule for untrusted text in logs (`securewsgi.text.printable`), and the
places that write such text: the access log, the middleware's refusal lines, the HTTP
protocol's application-error lines and the TLS refusal lines."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import webob
from hypothesis import given
from hypothesis import strategies as st

from securewsgi import IdentityMiddleware
from securewsgi.server.accesslog import AccessLogWriter
from securewsgi.text import printable


@pytest.mark.parametrize(("value", "expected"), [
    ("/plain/path?q=1", "/plain/path?q=1"),
    ("café ünïcode", "café ünïcode"),            # printable non-ASCII stays readable
    ("a\nb\r\tc\x00\x7f", "a\\x0ab\\x0d\\x09c\\x00\\x7f"),
    ("nbsp\xa0", "nbsp\\xa0"),
    ("rtl\u202eevil", "rtl\\u202eevil"),          # bidi override: hides what follows
    ("line\u2028sep", "line\\u2028sep"),
    ("tag\U000e0041", "tag\\U000e0041"),
    ("back\\slash", "back\\\\slash"),
    ("forged\\x0a", "forged\\\\x0a"),             # not the escape of a newline
])
def test_printable_rule(value: str, expected: str) -> None:
    assert printable(value) == expected


def test_printable_limit() -> None:
    assert printable("abcdef", 6) == "abcdef"
    assert printable("abcdefg", 6) == "abcdef..."
    assert printable("\n" * 10, 2) == "\\x0a\\x0a..."  # the limit counts input characters


@given(st.text())
def test_printable_output_is_one_printable_line_that_can_be_read_back(value: str) -> None:
    out = printable(value)
    assert out.isprintable()
    # every escape stands for exactly one character: Python reads the text back
    assert out.encode("latin-1", "backslashreplace").decode("unicode_escape") == value


# ------------------------------------------------------------------------ the users


def _environ(**extra: Any) -> dict:
    environ = webob.Request.blank("/").environ
    environ.update(extra)
    return environ


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_access_log_escapes_request_values(tmp_path: Path, fmt: str) -> None:
    log = tmp_path / "access.log"
    writer = AccessLogWriter(log, fmt)
    writer(_environ(REQUEST_METHOD="GET\n", RAW_PATH_INFO="/a b\\x0a\u202e",
                    REMOTE_ADDR="127.0.0.1"), 200, 2, 0.001)
    writer.close()
    text = log.read_text(encoding="utf-8")
    assert text.count("\n") == 1
    if fmt == "json":
        record = json.loads(text)
        assert (record["method"], record["path"]) == ("GET\\x0a", "/a%20b\\\\x0a\\u202e")
    else:  # spaces separate the fields: a space in a value is written %20
        assert '"GET\\x0a /a%20b\\\\x0a\\u202e HTTP/1.0" 200 2 ' in text


def test_middleware_refusal_lines_escape_request_values(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    mw = IdentityMiddleware(lambda environ, start_response: [], default="deny")
    caplog.set_level(logging.INFO, logger="securewsgi.authz")

    def refusal_line(method: str, path: str, status: int) -> str:
        request = webob.Request.blank("/", environ={
            "REQUEST_METHOD": method, "PATH_INFO": path, "RAW_PATH_INFO": path})
        assert request.get_response(mw).status_int == status
        [line] = [r.getMessage() for r in caplog.records if r.name == "securewsgi.authz"]
        caplog.clear()
        assert "\n" not in line
        return line

    # refused as ambiguous (a control character): the path is quoted, cut at 300
    head = "/x\n2026-01-01 INFO forged\\"
    line = refusal_line("GET", head + "y" * 400, 400)
    assert "/x\\x0a2026-01-01 INFO forged\\\\" + "y" * (300 - len(head)) + "...:" in line
    # denied by the default: method (cut at 20) and path
    # (PEP 3333: PATH_INFO holds the bytes as latin-1; U+0085 NEL is \xc2\x85 in UTF-8)
    line = refusal_line("GET\rPOST" + "T" * 20, "/caf\xc3\xa9\xc2\x85", 403)
    assert "GET\\x0dPOST" + "T" * 12 + "... /caf\xc3\xa9\xc2\\x85 " in line
