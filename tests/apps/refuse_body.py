"""Test app: refuses any request body with 413 without reading it (as an app that
checks Content-Length first does); answers anything else with 200."""


def app(environ, start_response):
    if environ.get("CONTENT_LENGTH") or environ.get("HTTP_TRANSFER_ENCODING"):
        body = b"too large\n"
        start_response("413 Content Too Large", [("Content-Type", "text/plain"),
                                                 ("Content-Length", str(len(body)))])
        return [body]
    body = b"ok\n"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
