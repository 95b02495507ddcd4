"""Test app: GET /slow?seconds=N answers 200 after N seconds (time.sleep is green when
the server monkey-patches); anything else answers at once."""
import time
from urllib.parse import parse_qs


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/slow":
        seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("seconds", ["1"])[0])
        environ["wsgi.errors"].write(f"slow request started ({seconds}s)\n")
        environ["wsgi.errors"].flush()
        time.sleep(seconds)
    body = b"done\n"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
