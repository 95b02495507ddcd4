"""Test app: reads the whole request body and answers with its length and SHA-256."""
import hashlib


def app(environ, start_response):
    data = environ["wsgi.input"].read()
    body = f"{len(data)} {hashlib.sha256(data).hexdigest()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
