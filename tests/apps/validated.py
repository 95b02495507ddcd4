"""Test app: a small application behind `wsgiref.validate.validator`, which asserts
PEP 3333 on both sides (the environ the server built, how the server iterates and
closes the body). Every violation it finds is recorded, wherever it surfaces (in the
app call, in the server's iteration or close(), or in the iterator's __del__), and
GET /_failures answers the list as JSON, so a test can fail on it.

Routes behind the validator: /echo reads the body (in blocks, as the validator
requires) and answers "<length> <sha256>"; /file sends a file through
wsgi.file_wrapper; /stream answers in several pieces; /violate breaks PEP 3333 on
purpose (read() without a size), to show that violations are recorded; anything else
answers a line.
"""
import hashlib
import io
import json
import sys
import warnings
from wsgiref.validate import WSGIWarning, validator

FAILURES = []
warnings.filterwarnings("error", category=WSGIWarning)  # a warning is a failure too


def _record(exc):
    FAILURES.append(f"{type(exc).__name__}: {exc}")


_previous_hook = sys.unraisablehook


def _unraisable(unraisable):
    """The validator's `__del__` checks (an iterator never closed) cannot raise."""
    if isinstance(unraisable.exc_value, (AssertionError, WSGIWarning)):
        _record(unraisable.exc_value)
    _previous_hook(unraisable)


sys.unraisablehook = _unraisable


def inner(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/echo":
        stream = environ["wsgi.input"]
        data = b""
        while True:
            block = stream.read(4096)
            if not block:
                break
            data += block
        body = f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/violate":  # the validator wants read(size): this is a violation
        environ["wsgi.input"].read()
    if path == "/file":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"f" * 100000), 8192)
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"a" * 5000, b"", b"b" * 10])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello\n"]


_validated = validator(inner)


class _Recorded:
    """The validator's iterator, recording what it raises while the server uses it."""

    def __init__(self, iterator):
        self.iterator = iterator

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self.iterator)
        except (AssertionError, WSGIWarning) as exc:
            _record(exc)
            raise

    def close(self):
        try:
            self.iterator.close()
        except (AssertionError, WSGIWarning) as exc:
            _record(exc)
            raise


def app(environ, start_response):
    if environ["PATH_INFO"] == "/_failures":
        body = json.dumps(FAILURES).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    try:
        return _Recorded(_validated(environ, start_response))
    except (AssertionError, WSGIWarning) as exc:
        _record(exc)
        raise
