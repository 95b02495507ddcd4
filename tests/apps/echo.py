"""Test app: answers with every string value of its environ, as JSON."""
import json


def app(environ, start_response):
    peer = environ.get("securewsgi.peer")
    data = {k: v for k, v in environ.items() if isinstance(v, str)}
    data["securewsgi.peer.source"] = peer.source if peer is not None else None
    body = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
