"""Path normalisation (securewsgi.identity.paths) and the bypass attempts it exists to stop.

Requests are built the way eventlet.wsgi builds them: ``RAW_PATH_INFO`` is the path
as sent, ``PATH_INFO = urllib.parse.unquote(raw, encoding="latin1")``.
"""
from __future__ import annotations

import urllib.parse
from typing import Any

import pytest
import trustme
import webob
from hypothesis import given, settings
from hypothesis import strategies as st
from support import memory_peer

from securewsgi import IdentityMiddleware, PeerIdentity
from securewsgi.identity.paths import (
    ORIGINAL_PATH_KEY,
    PathError,
    check_raw_path,
    judge_path,
    normalise_path,
)


def eventlet_environ(raw: str, **extra: Any) -> dict:
    """PATH_INFO / RAW_PATH_INFO exactly as eventlet.wsgi.HttpProtocol.get_environ."""
    environ = webob.Request.blank("/").environ
    environ["RAW_PATH_INFO"] = raw
    environ["PATH_INFO"] = urllib.parse.unquote(raw, encoding="latin1")
    environ.update(extra)
    return environ


# ---------------------------------------------------------------------- normaliser


@pytest.mark.parametrize(("path", "expected"), [
    ("", ""),
    ("/", "/"),
    ("/admin", "/admin"),
    ("/admin/", "/admin/"),
    ("//admin", "/admin"),
    ("///admin//x//", "/admin/x/"),
    ("/./admin", "/admin"),
    ("/admin/.", "/admin/"),
    ("/admin/./", "/admin/"),
    ("/x/../admin", "/admin"),
    ("/x/y/../../admin", "/admin"),
    ("/admin/x/..", "/admin/"),
    ("/admin/..", "/"),
    ("/..admin/x", "/..admin/x"),  # not a dot segment
    ("/a/.../b", "/a/.../b"),
    ("/.well-known/acme", "/.well-known/acme"),
    ("/100%", "/100%"),  # a lone percent sign is data
    ("/50%off", "/50%off"),
    ("/caf\u00c3\u00a9", "/caf\u00c3\u00a9"),
])
def test_normalise(path: str, expected: str) -> None:
    assert normalise_path(path) == expected
    assert normalise_path(expected) == expected


@pytest.mark.parametrize(("path", "reason"), [
    ("/..", "climbs above the root"),
    ("/../admin", "climbs above the root"),
    ("/x/../../admin", "climbs above the root"),
    ("//..//admin", "climbs above the root"),
    ("/admin\\x", "backslash"),
    ("/admin\x00", "NUL"),
    ("/%61dmin", "percent-encoded twice"),  # what PATH_INFO holds for raw /%2561dmin
    ("/admin%2fx", "percent-encoded twice"),
    ("admin", "does not start with '/'"),
    ("*", "does not start with '/'"),
    ("http://host/admin", "does not start with '/'"),
])
def test_refused_paths(path: str, reason: str) -> None:
    with pytest.raises(PathError) as info:
        normalise_path(path)
    assert reason in info.value.reason


def test_fast_path_returns_the_same_object() -> None:
    path = "/v2.1/servers/8c5e4e1a-2f0b-4b6f-9d3a-000000000000/action"
    assert normalise_path(path) is path


@pytest.mark.parametrize("raw", ["/admin%2Fx", "/admin%2fx", "/a%5Cb", "/a%5cb", "/a%00",
                                 "/public/..%2Fadmin"])
def test_raw_path_with_encoded_separators_is_refused(raw: str) -> None:
    with pytest.raises(PathError):
        check_raw_path(raw)


@pytest.mark.parametrize("raw", ["/admin", "/%61dmin", "/a%20b", "/100%25", "/%2e%2e/x"])
def test_raw_path_check_passes_other_encodings(raw: str) -> None:
    check_raw_path(raw)  # (dot segments are judged after decoding)


# ---------------------------------------------------------------------- judge_path


def test_judge_rewrites_path_info_and_raw_path() -> None:
    environ = eventlet_environ("/public//x/./y/../z")
    assert judge_path(environ) == "/public/x/z"
    assert environ["PATH_INFO"] == "/public/x/z"
    assert environ["RAW_PATH_INFO"] == "/public/x/z"
    assert environ[ORIGINAL_PATH_KEY] == "/public//x/./y/../z"


def test_judge_re_encodes_the_rewritten_raw_path() -> None:
    environ = eventlet_environ("/a//caf%C3%A9%20x/%2e/")
    assert judge_path(environ) == "/a/caf\u00c3\u00a9 x/"
    assert environ["RAW_PATH_INFO"] == "/a/caf%C3%A9%20x/"
    assert urllib.parse.unquote(environ["RAW_PATH_INFO"], encoding="latin1") == \
        environ["PATH_INFO"]


def test_judge_leaves_normal_paths_alone() -> None:
    environ = eventlet_environ("/%61dmin/x")
    assert judge_path(environ) == "/admin/x"
    assert environ["RAW_PATH_INFO"] == "/%61dmin/x"  # unchanged: nothing was rewritten
    assert ORIGINAL_PATH_KEY not in environ


def test_judge_includes_script_name() -> None:
    environ = eventlet_environ("/x/../admin", SCRIPT_NAME="/api")
    assert judge_path(environ) == "/api/admin"
    assert environ["PATH_INFO"] == "/admin"
    assert environ["SCRIPT_NAME"] == "/api"
    environ = eventlet_environ("", SCRIPT_NAME="/api")
    assert judge_path(environ) == "/api"
    assert judge_path(eventlet_environ("")) == "/"


def test_judge_without_raw_path_uses_request_uri() -> None:
    environ = webob.Request.blank("/").environ
    environ.update(PATH_INFO="/admin/x", REQUEST_URI="/admin%2Fx?q=1")
    with pytest.raises(PathError):
        judge_path(environ)
    environ.update(REQUEST_URI="/admin/x?next=%2Fhome")  # an encoded slash in the query is fine
    assert judge_path(environ) == "/admin/x"
    environ = webob.Request.blank("/").environ
    environ.update(PATH_INFO="/admin/x", RAW_URI="/admin%5cx")
    with pytest.raises(PathError):
        judge_path(environ)


# ------------------------------------------------------- bypass list, end to end


@pytest.fixture(scope="module")
def ops_peer() -> PeerIdentity:
    return memory_peer(trustme.CA(), "ops-1")


class Router:
    """Records the path the application would route."""

    def __init__(self) -> None:
        self.routed: list[str] = []

    def __call__(self, environ: dict, start_response: Any) -> list:
        self.routed.append(environ.get("SCRIPT_NAME", "") + environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]


RULES = [{"name": "admin", "paths": ["/admin/*"], "allow": [{"cn": "ops-*"}]}]

BYPASSES = [
    "/admin", "/admin/", "/admin/users", "//admin", "///admin/users", "/./admin",
    "/admin/.", "/x/../admin", "/x/y/../../admin/users", "/public/../admin",
    "/x/..//admin", "/%61dmin", "/%61%64%6d%69%6e/users", "/%2e/admin", "/x/%2e%2e/admin",
    "/x/.%2e/admin", "/public%2f..%2fadmin", "/admin%2fusers", "/public/..%2Fadmin",
    "/%2e%2e/admin", "/../admin", "/%5cadmin", "/public\\..\\admin", "/public%5c..%5cadmin",
    "/admin%00", "/admin/%00/x", "/%2561dmin", "/%252e%252e/admin", "admin",
    "http://evil/admin", "/admin/x/../../admin",
]


@pytest.mark.parametrize("raw", BYPASSES)
def test_bypass_attempts_never_reach_the_protected_subtree(raw: str) -> None:
    router = Router()
    mw = IdentityMiddleware(router, rules=RULES)
    response = webob.Request(eventlet_environ(raw, **{"securewsgi.tls_peer": None})
                             ).get_response(mw)
    assert response.status_int in (400, 403), (raw, response.status)
    assert router.routed == []


@pytest.mark.parametrize("raw", BYPASSES)
def test_bypass_list_with_a_certificate_is_judged_consistently(
        raw: str, ops_peer: PeerIdentity) -> None:
    """An authorised client gets in (or a 400); the app routes exactly what was judged."""
    router = Router()
    mw = IdentityMiddleware(router, rules=RULES)
    environ = eventlet_environ(raw, **{"securewsgi.tls_peer": ops_peer})
    response = webob.Request(environ).get_response(mw)
    if response.status_int == 200:
        (routed,) = router.routed
        assert routed == "/admin" or routed.startswith("/admin/")
        assert normalise_path(routed) == routed
    else:
        assert response.status_int == 400
        assert response.body == b"400 Bad Request: ambiguous request path\n"


@pytest.mark.parametrize(("raw", "routed"), [
    ("/public//x", "/public/x"),
    ("/admin/../public", "/public"),
    ("/admin/x/../../public/", "/public/"),
    ("/administrator", "/administrator"),
    ("/%70ublic", "/public"),
])
def test_paths_outside_the_subtree_pass_normalised(raw: str, routed: str) -> None:
    router = Router()
    mw = IdentityMiddleware(router, rules=RULES)
    response = webob.Request(eventlet_environ(raw, **{"securewsgi.tls_peer": None})
                             ).get_response(mw)
    assert response.status_int == 200
    assert router.routed == [routed]


def test_script_name_is_part_of_the_judged_path() -> None:
    router = Router()
    mw = IdentityMiddleware(router, rules=[
        {"name": "admin", "paths": ["/api/admin/*"], "allow": [{"any": True}]}])
    for raw in ("/admin", "//admin/x", "/x/../admin"):
        environ = eventlet_environ(raw, SCRIPT_NAME="/api", **{"securewsgi.tls_peer": None})
        assert webob.Request(environ).get_response(mw).status_int == 403
    environ = eventlet_environ("/../admin", SCRIPT_NAME="/api",
                               **{"securewsgi.tls_peer": None})
    assert webob.Request(environ).get_response(mw).status_int == 400
    assert router.routed == []


def test_no_rules_means_paths_are_left_alone() -> None:
    """Without rules there is nothing to bypass: identity only, paths untouched."""
    router = Router()
    mw = IdentityMiddleware(router)
    for raw in ("/a%2Fb", "//x/../y"):
        environ = eventlet_environ(raw, **{"securewsgi.tls_peer": None})
        assert webob.Request(environ).get_response(mw).status_int == 200
    assert router.routed == ["/a/b", "//x/../y"]


# ---------------------------------------------------------------------- properties

PATHISH = st.lists(st.sampled_from([*list("/.a%2fF5cC0\\x\x00é"), "..", "%2e", "//", "/../"]),
                   max_size=16).map("".join)


@settings(max_examples=500, deadline=None)
@given(path=st.one_of(PATHISH, st.text(max_size=24)))
def test_normaliser_is_idempotent_and_raises_only_path_error(path: str) -> None:
    try:
        once = normalise_path(path)
    except PathError:
        return
    assert normalise_path(once) == once
    if once:
        assert once.startswith("/")
        segments = once.split("/")[1:]
        assert "." not in segments and ".." not in segments
        assert "//" not in once


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(PATHISH, st.text(max_size=24)),
       script=st.sampled_from(["", "/api", "/api/"]))
def test_judge_path_raises_only_path_error(raw: str, script: str) -> None:
    environ: dict = {"RAW_PATH_INFO": raw, "SCRIPT_NAME": script,
                     "PATH_INFO": urllib.parse.unquote(raw, encoding="latin1")}
    try:
        judged = judge_path(environ)
    except PathError:
        return
    assert judged.startswith("/")
    # judging again what the application now sees changes nothing
    again = dict(environ)
    assert judge_path(again) == judged
    assert again == environ


@settings(max_examples=300, deadline=None)
@given(path=st.text(max_size=30))
def test_judged_path_is_what_the_app_routes(path: str) -> None:
    environ: dict = {"PATH_INFO": path}
    try:
        judged = judge_path(environ)
    except PathError:
        return
    assert judged == (environ["PATH_INFO"] or "/")



# ------------------------------------------------------------- control characters

# C0 controls and DEL; NUL was refused before (test_refused_paths, BYPASSES)
CONTROLS = [chr(code) for code in range(0x01, 0x20)] + ["\x7f"]
# Not control characters: UTF-8 bytes decoded as latin-1 (PEP 3333) give U+0080-U+00FF,
# some of them unprintable (C1, NBSP, soft hyphen); they are data.
DATA_PATHS = ["/a b", "/caf\u00c3\u00a9", "/\u00c4\u0081", "/x\u0080\u009f\u00a0\u00ad",
              "/~user/!$&'()*+,;=:@"]


@pytest.mark.parametrize("char", CONTROLS, ids=lambda c: f"0x{ord(c):02X}")
def test_decoded_control_characters_are_refused(char: str) -> None:
    """/admin%0a reaches PATH_INFO as "/admin\\n": no rule names it, but a router that
    matches with "^/admin$" routes it to /admin (and it splits headers and log lines)."""
    with pytest.raises(PathError) as info:
        normalise_path(f"/admin{char}")
    assert "control character" in info.value.reason
    with pytest.raises(PathError):
        normalise_path(f"/a{char}b/c")
    # as a server decodes it, with and without the raw path next to it
    raw = f"/admin%{ord(char):02x}"
    for environ in (eventlet_environ(raw), eventlet_environ(raw.upper()),
                    {"PATH_INFO": f"/admin{char}"}):
        with pytest.raises(PathError):
            judge_path(environ)
    # ... and only those: other unprintable characters are data
    for path in DATA_PATHS:
        assert normalise_path(path) == path


@pytest.mark.parametrize("raw", ["/admin%0a", "/admin%0D", "/x%09y", "/%7F", "/a%1fb", "/a%01"])
def test_raw_path_with_encoded_control_characters_is_refused(raw: str) -> None:
    with pytest.raises(PathError) as info:
        check_raw_path(raw)
    assert "control character" in info.value.reason


@pytest.mark.parametrize("char", CONTROLS, ids=lambda c: f"0x{ord(c):02X}")
def test_middleware_refuses_control_characters_everywhere_when_rules_are_active(
        char: str) -> None:
    router = Router()
    mw = IdentityMiddleware(router, rules=RULES)
    for raw in (f"/admin%{ord(char):02X}", f"/public%{ord(char):02x}/x"):
        response = webob.Request(eventlet_environ(raw, **{"securewsgi.tls_peer": None})
                                 ).get_response(mw)
        assert response.status_int == 400, raw
        assert response.body == b"400 Bad Request: ambiguous request path\n"
    # literal, as a lax server might pass it (no raw path to look at)
    environ = webob.Request.blank("/").environ
    environ.update({"PATH_INFO": f"/public{char}", "securewsgi.tls_peer": None})
    assert webob.Request(environ).get_response(mw).status_int == 400
    assert router.routed == []


def test_control_check_keeps_plain_paths_on_the_fast_path() -> None:
    """Refused: a tab; and the check costs ordinary paths no trip to the slow path."""
    with pytest.raises(PathError):
        normalise_path("/admin\t")
    for path in ("/v2.1/servers/8c5e4e1a-2f0b-4b6f-9d3a-000000000000/action", "/healthz",
                 "/a b/~x"):
        assert normalise_path(path) is path
