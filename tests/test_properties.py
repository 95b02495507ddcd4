"""Property-based tests (hypothesis): whatever the input, the config loader, the
forwarded-certificate parser and the HTTP request parser raise only their documented
error types, never a bare exception that would become a traceback or a 500."""
from __future__ import annotations

import contextlib
import string
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securewsgi.config import ServerConfig, load_config
from securewsgi.errors import ConfigError
from securewsgi.http11 import Refusal, _check_partial_head, _parse_head
from securewsgi.identity.forwarded import ForwardedCertError, ForwardedCertReader, parse_xfcc

SECTIONS = ("server", "tls", "app", "identity", "authorization", "logging", "servr")
KEYS = ("host", "port", "workers", "keepalive", "mode", "certfile", "ca_certs",
        "min_version", "factory", "options", "remote_user", "trusted_proxies", "default",
        "rules", "paths", "allow", "level", "format", "access_log", "cert_reqs",
        "ssl_version", "header_timeout", "max_request_body", "name", "cn")
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 70000),
                    st.floats(allow_nan=True), st.text(max_size=12),
                    st.sampled_from(["${X}", "${HOME:-/}", "TLSv1.1", "mutual", "/*",
                                     "CERT_REQUIRED", "auto", "re:(", "a:b"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)),
    max_leaves=8)
documents = st.dictionaries(st.sampled_from(SECTIONS),
                            st.one_of(values, st.dictionaries(st.sampled_from(KEYS), values,
                                                              max_size=4)), max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents)
def test_config_loader_raises_only_config_error(document: dict) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "service.yaml"
        path.write_text(yaml.safe_dump(document))
        try:
            load_config(path, environ={})
        except ConfigError as exc:
            assert "\n" not in str(exc)
            assert str(exc).startswith(str(path))


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_config_loader_on_arbitrary_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        for name in ("service.yaml", "service.ini"):
            path = Path(directory) / name
            path.write_text(text)
            try:
                load_config(path, environ={})
            except ConfigError as exc:
                assert "\n" not in str(exc)


XFCC_PIECES = st.sampled_from(['Cert="', '"', ";", ",", "=", "By=", "Hash=", "URI=", "\\",
                               "%2D%2D%2D%2D%2DBEGIN", "CERTIFICATE", "%0A", "abc", " "])


@settings(max_examples=500, deadline=None)
@given(value=st.one_of(st.text(max_size=120), st.lists(XFCC_PIECES, max_size=20).map("".join)))
def test_forwarded_header_parsers_raise_only_their_error(value: str) -> None:
    with contextlib.suppress(ForwardedCertError):
        parse_xfcc(value)
    for header in ("x-forwarded-client-cert", "x-ssl-client-cert"):
        with contextlib.suppress(ForwardedCertError):
            ForwardedCertReader(header).peer(value)


OPTIONS = ServerConfig(url_length_limit=256, max_header_count=10, max_header_bytes=512)
HEAD_PIECES = st.sampled_from([b"GET", b"POST", b" ", b"/", b"/a", b"HTTP/1.1", b"HTTP/1.0",
                               b"HTTP/2.0", b"\r\n", b"\n", b"\r", b"Host: x", b":",
                               b"Content-Length: 5", b"Transfer-Encoding: chunked",
                               b"Connection: close", b"\x00", b"\t", b" x", b"*", b"\xff",
                               b"Content-Length: 1, 2", b"http://h/"])


@settings(max_examples=2000, deadline=None)
@given(head=st.one_of(st.binary(max_size=300), st.lists(HEAD_PIECES, max_size=25).map(b"".join)))
def test_http_parser_raises_only_refusal(head: bytes) -> None:
    try:
        _check_partial_head(head, OPTIONS)
        end = head.find(b"\r\n\r\n")
        if end >= 0:
            request = _parse_head(head[:end + 2], OPTIONS)
            assert request.target.startswith("/") or request.target == "*"
            assert request.version in ("HTTP/1.0", "HTTP/1.1")
            assert not (request.chunked and request.content_length is not None)
    except Refusal as refusal:
        assert refusal.status in (400, 408, 413, 414, 431, 501, 505)


@given(name=st.text(alphabet=string.ascii_letters + "-_", min_size=1, max_size=12),
       value=st.text(alphabet=string.printable, max_size=20))
def test_parsed_header_values_never_hold_line_breaks(name: str, value: str) -> None:
    head = f"GET / HTTP/1.1\r\nHost: x\r\n{name}: {value}\r\n".encode()
    try:
        request = _parse_head(head, ServerConfig())
    except Refusal:
        return
    keys = dict(request.environ_headers)
    for text in keys.values():
        assert "\r" not in text and "\n" not in text
    env_key = "HTTP_" + name.upper().replace("-", "_")
    if "_" in name:  # "X_A" must not pose as "X-A": the field is not passed at all
        assert env_key not in keys
