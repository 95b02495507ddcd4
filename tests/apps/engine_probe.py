"""Test app: GET /modules answers whether eventlet is imported in this process and
whether the socket module was made green (monkey-patched)."""
import json
import socket
import sys


def app(environ, start_response):
    body = json.dumps({
        "eventlet_imported": "eventlet" in sys.modules,
        "socket_is_green": socket.socket.__module__ != "socket",
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
