"""Test app for tests/test_http11_conformance.py: one route per protocol behaviour.

/db-down, /db-slow    the app's own socket errors (ConnectionRefusedError, socket.timeout)
/text                 a str in the body list (PEP 3333 wants bytes)
/late-text            a generator: 8000 bytes, then a str
/webob, /werkzeug     the request body as each framework reads it: "<length> <sha256>"
/file?size=N          N bytes of a file through wsgi.file_wrapper
/file-closed          whether the last /file's file object was closed afterwards
/big?size=N           N bytes as ONE body item (larger than any socket buffer)
/empty                an empty body and no Content-Length
/connection?value=V   answers with "Connection: V"
anything else         the request's environ (string values) as JSON
"""
import hashlib
import json
import os
import socket
from urllib.parse import parse_qs

_FILES = []  # the file objects handed to wsgi.file_wrapper


def _query(environ, name, default):
    return parse_qs(environ.get("QUERY_STRING", "")).get(name, [default])[0]


def _digest(data):
    return f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode()


def _file(environ, start_response):
    size = int(_query(environ, "size", "0"))
    # in the server's working directory: the test's own temporary directory
    path = os.path.join(os.getcwd(), f"file-wrapper-{os.getpid()}-{size}")
    if not os.path.exists(path):
        with open(path + ".tmp", "wb") as out:
            out.write(hashlib.sha256(str(size).encode()).digest() * (size // 32 + 1))
            out.truncate(size)
        os.replace(path + ".tmp", path)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    handle = open(path, "rb")  # noqa: SIM115 -- closed by the server, through the wrapper
    _FILES.append(handle)
    return environ["wsgi.file_wrapper"](handle, 32768)


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/db-down":
        raise ConnectionRefusedError(111, "Connection refused (the database)")
    if path == "/db-slow":
        raise socket.timeout("the database timed out")
    if path == "/text":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ["text"]
    if path == "/late-text":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"x" * 8000, "text"])
    if path in ("/webob", "/werkzeug"):
        if path == "/webob":
            import webob

            data = webob.Request(environ).body
        else:
            from werkzeug.wrappers import Request

            data = Request(environ).get_data()
        body = _digest(data)
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/file":
        return _file(environ, start_response)
    if path == "/file-closed":
        body = json.dumps([handle.closed for handle in _FILES]).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    if path == "/big":
        size = int(_query(environ, "size", "0"))
        body = (hashlib.sha256(str(size).encode()).digest() * (size // 32 + 1))[:size]
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(size))])
        return [body]
    if path == "/empty":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return []
    if path == "/connection":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2"),
                                  ("Connection", _query(environ, "value", ""))])
        return [b"ok"]
    body = json.dumps({k: v for k, v in environ.items() if isinstance(v, str)}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
