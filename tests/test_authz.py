"""Authorization rules (`authorization.rules`): compiled policies judged against real certificates,
the pattern language per field, configuration errors, and YAML/INI equivalence."""
from __future__ import annotations

import datetime as dt
import logging
import re
import string
from pathlib import Path
from typing import Any, Optional

import pytest
import webob
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from securewsgi import IdentityMiddleware, PeerIdentity
from securewsgi.config import load_config
from securewsgi.config.loader import read_rules
from securewsgi.errors import ConfigError
from securewsgi.identity.authz import (
    Decision,
    compile_glob,
    compile_policy,
    normalise_fingerprint,
    normalise_serial,
)
from securewsgi.pki import CertificateAuthority
from securewsgi.text import printable

UTC = dt.timezone.utc


# ------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("Dev CA")


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    return CertificateAuthority.create("Other CA")


def make_peer(ca: CertificateAuthority, subject: Any = "alice", *, sans: tuple = (),
              serial: Optional[int] = None) -> PeerIdentity:
    if isinstance(subject, str):
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return PeerIdentity.from_der(cert.public_bytes(serialization.Encoding.DER))


def policy(*rules: dict, default: str = "allow") -> Any:
    return compile_policy(read_rules(Path("test.yaml"), list(rules)), default, "test.yaml")


def allows(entry: dict, peer: Optional[PeerIdentity]) -> bool:
    """Whether a one-entry rule on /p admits `peer`."""
    return policy({"name": "r", "paths": ["/p"], "allow": [entry]}, default="deny").decide(
        "/p", "GET", peer).allowed


def dn(*pairs: tuple) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in pairs])


# -------------------------------------------------------------------------- paths


@pytest.mark.parametrize(("pattern", "path", "matches"), [
    ("/healthz", "/healthz", True),
    ("/healthz", "/healthz/", True),  # an exact path also covers its trailing slash
    ("/healthz", "/healthz/x", False),
    ("/healthz", "/healthzz", False),
    ("/healthz", "/", False),
    ("/healthz/", "/healthz", True),
    ("/admin/*", "/admin", True),
    ("/admin/*", "/admin/", True),
    ("/admin/*", "/admin/users/1", True),
    ("/admin/*", "/administrator", False),
    ("/admin/*", "/adm", False),
    ("/admin/*", "/", False),
    ("/v1/admin/*", "/v1/admin/x", True),
    ("/v1/admin/*", "/v1/other", False),
    ("/*", "/", True),
    ("/*", "/anything/at/all", True),
    ("/", "/", True),
    ("/", "/x", False),
    ("/café", "/caf\u00c3\u00a9", True),  # PATH_INFO carries UTF-8 bytes as latin-1
])
def test_path_patterns(pattern: str, path: str, matches: bool) -> None:
    p = policy({"name": "r", "paths": [pattern], "allow": []})
    assert p.decide(path, "GET", None).rule == ("r" if matches else "(default)")


def test_several_paths_in_one_rule() -> None:
    p = policy({"name": "r", "paths": ["/a", "/b/*"], "allow": []})
    assert [p.decide(x, "GET", None).rule for x in ("/a", "/b/c", "/c")] == [
        "r", "r", "(default)"]


# ------------------------------------------------------------------------ methods


@pytest.mark.parametrize(("methods", "method", "matches"), [
    (None, "GET", True),
    (None, "DELETE", True),
    (None, "PROPFIND", True),
    (["POST", "PUT"], "POST", True),
    (["POST", "PUT"], "GET", False),
    (["GET"], "HEAD", True),  # HEAD is served by GET handlers: GET rules cover it
    (["HEAD"], "HEAD", True),
    (["HEAD"], "GET", False),
    (["post"], "POST", True),  # methods in rules are upper-cased
    (["DELETE"], "delete", True),  # ... and so are request methods, as frameworks route
    (["GET"], "head", True),
])
def test_methods(methods: Optional[list], method: str, matches: bool) -> None:
    rule: dict = {"name": "r", "paths": ["/x"], "allow": []}
    if methods is not None:
        rule["methods"] = methods
    assert policy(rule).decide("/x", method, None).rule == ("r" if matches else "(default)")


def test_first_matching_rule_decides(ca: CertificateAuthority) -> None:
    alice = make_peer(ca, "alice")
    p = policy(
        {"name": "writes", "paths": ["/admin/*"], "methods": ["POST"], "allow": [{"cn": "root"}]},
        {"name": "reads", "paths": ["/admin/*"], "allow": [{"cn": "alice"}]},
        {"name": "never-reached", "paths": ["/admin/*"], "allow": [{"anonymous": True}]},
        default="deny",
    )
    assert p.decide("/admin/x", "POST", alice) == Decision(False, "writes")
    assert p.decide("/admin/x", "GET", alice).allowed
    assert p.decide("/admin/x", "GET", alice).rule == "reads"
    assert not p.decide("/admin/x", "GET", None).allowed  # "reads" decides, not the next rule
    assert p.decide("/other", "GET", alice).rule == "(default)"
    assert not p.decide("/other", "GET", alice).allowed


def test_remembered_decisions_are_per_peer_and_bounded(ca: CertificateAuthority) -> None:
    """Decisions are remembered per (path, method, peer): a remembered "allow" for one
    client is never handed to another client, to anonymous or to another method on
    the same path; and the table stays bounded."""
    alice, mallory = make_peer(ca, "alice"), make_peer(ca, "mallory")
    p = policy({"name": "admin", "paths": ["/admin/*"], "allow": [{"cn": "alice"}]},
               default="deny")
    for _ in range(3):  # alternate, so each answer may come from the table
        assert p.decide("/admin/x", "GET", alice).allowed
        assert not p.decide("/admin/x", "GET", mallory).allowed
        assert not p.decide("/admin/x", "GET", None).allowed
        assert not p.decide("/admin/x", "DELETE", mallory).allowed
    for n in range(5000):
        assert p.decide(f"/admin/{n}", "GET", alice).allowed
    assert len(p._recent) <= 4096
    assert not p.decide("/admin/x", "GET", mallory).allowed


@pytest.mark.parametrize("default", ["allow", "deny"])
def test_default_when_no_rule_matches(default: str) -> None:
    p = policy({"name": "r", "paths": ["/x"], "allow": []}, default=default)
    assert p.decide("/y", "GET", None).allowed is (default == "allow")
    assert p.decide("/x", "GET", None).allowed is False  # a rule without entries denies


def test_policy_without_rules_is_inactive() -> None:
    assert not compile_policy((), "allow").active
    assert compile_policy((), "deny").active
    assert policy({"name": "r", "paths": ["/x"], "allow": []}).active


# -------------------------------------------------------------------- allow fields


def test_any_and_anonymous(ca: CertificateAuthority) -> None:
    alice = make_peer(ca)
    assert allows({"any": True}, alice)
    assert not allows({"any": True}, None)
    assert allows({"anonymous": True}, None)
    assert allows({"anonymous": True}, alice)  # anonymous matches every request


def test_anonymous_on_a_rule_that_needs_a_certificate() -> None:
    for entry in ({"cn": "**"}, {"dn": "**"}, {"san_uri": "**"}, {"serial": "1"},
                  {"fingerprint_sha256": "0" * 64}, {"issuer_dn": "**"}, {"any": True}):
        assert not allows(entry, None), entry


@pytest.mark.parametrize(("pattern", "cn", "matches"), [
    ("alice", "alice", True),
    ("alice", "Alice", False),  # case-sensitive
    ("alice", "alice2", False),
    ("ops-*", "ops-alice", True),
    ("ops-*", "ops-", True),
    ("ops-*", "dev-ops-alice", False),
    ("ops-*", "ops-alice.smith/x,y", True),  # a CN has no separator: * matches anything
    ("*.svc", "a.b.svc", True),
    ("re:ops-[a-z]+", "ops-alice", True),
    ("re:ops-[a-z]+", "ops-alice1", False),  # full match, not search
    ("re:ops", "devops", False),
    ("a?c", "abc", False),  # only * is special
    ("a?c", "a?c", True),
    ("[ab]", "[ab]", True),
])
def test_cn(ca: CertificateAuthority, pattern: str, cn: str, matches: bool) -> None:
    assert allows({"cn": pattern}, make_peer(ca, cn)) is matches


def test_cn_absent_never_matches(ca: CertificateAuthority) -> None:
    peer = make_peer(ca, dn((NameOID.ORGANIZATION_NAME, "NoCN")))
    assert not allows({"cn": "**"}, peer)
    assert not allows({"cn": "re:.*"}, peer)


@pytest.mark.parametrize(("pattern", "matches"), [
    ("CN=alice,OU=ops,O=Example,C=US", True),
    ("CN=*,OU=ops,O=Example,C=US", True),
    ("CN=alice,OU=*,O=Example,C=US", True),
    ("CN=*,O=Example,C=US", False),  # * never crosses ","
    ("CN=**,O=Example,C=US", True),  # ** does
    ("CN=alice,**", True),
    ("CN=alice,*", False),
    ("*,C=US", False),
    ("**,C=US", True),
    ("re:CN=[a-z]+,OU=ops,.*", True),
    ("cn=alice,OU=ops,O=Example,C=US", False),
])
def test_dn(ca: CertificateAuthority, pattern: str, matches: bool) -> None:
    peer = make_peer(ca, dn((NameOID.COUNTRY_NAME, "US"), (NameOID.ORGANIZATION_NAME, "Example"),
                            (NameOID.ORGANIZATIONAL_UNIT_NAME, "ops"),
                            (NameOID.COMMON_NAME, "alice")))
    assert peer.subject == "CN=alice,OU=ops,O=Example,C=US"
    assert allows({"dn": pattern}, peer) is matches


def test_dn_escaped_comma_is_not_a_separator(ca: CertificateAuthority) -> None:
    peer = make_peer(ca, dn((NameOID.ORGANIZATION_NAME, "Example"),
                            (NameOID.COMMON_NAME, "Smith, John")))
    assert peer.subject == "CN=Smith\\, John,O=Example"
    assert allows({"dn": "CN=*,O=Example"}, peer)
    assert allows({"dn": "CN=Smith\\, *,O=Example"}, peer)
    assert not allows({"dn": "CN=Smith,*"}, peer)
    # a CN crafted to look like more RDNs cannot satisfy a pattern about the real ones
    evil = make_peer(ca, dn((NameOID.ORGANIZATION_NAME, "Evil"),
                            (NameOID.COMMON_NAME, "x,O=Example")))
    assert not allows({"dn": "CN=*,O=Example"}, evil)
    assert not allows({"dn": "CN=x,O=Example"}, evil)


def test_issuer_dn(ca: CertificateAuthority, other_ca: CertificateAuthority) -> None:
    assert allows({"issuer_dn": "CN=Dev CA"}, make_peer(ca))
    assert not allows({"issuer_dn": "CN=Dev CA"}, make_peer(other_ca))
    assert allows({"issuer_dn": "CN=* CA"}, make_peer(other_ca))


@pytest.mark.parametrize(("pattern", "matches"), [
    ("api.example.org", True),
    ("API.Example.ORG", True),  # DNS names ignore case
    ("*.example.org", True),
    ("*.org", False),  # * never crosses "."
    ("**.org", True),
    ("*.*.org", True),
    ("api.*", False),
    ("api.**", True),
    ("re:[a-z]+\\.example\\.org", True),
    ("re:API\\.EXAMPLE\\.ORG", True),
    ("other.example.org", False),
])
def test_san_dns(ca: CertificateAuthority, pattern: str, matches: bool) -> None:
    peer = make_peer(ca, sans=(x509.DNSName("web.test"), x509.DNSName("api.example.org")))
    assert allows({"san_dns": pattern}, peer) is matches  # any SAN of the type may match


@pytest.mark.parametrize(("pattern", "matches"), [
    ("spiffe://example.org/ns/ops/sa/deployer", True),
    ("spiffe://example.org/ns/ops/sa/*", True),
    ("spiffe://example.org/ns/ops/*", False),  # * never crosses "/"
    ("spiffe://example.org/ns/ops/**", True),
    ("spiffe://example.org/ns/*/sa/deployer", True),
    ("spiffe://*/ns/ops/sa/deployer", True),
    ("spiffe://example.org/ns/dev/**", False),
    ("re:spiffe://example\\.org/ns/(ops|admin)/.*", True),
    ("SPIFFE://example.org/ns/ops/sa/deployer", False),  # URIs are case-sensitive
])
def test_san_uri(ca: CertificateAuthority, pattern: str, matches: bool) -> None:
    peer = make_peer(ca, sans=(x509.UniformResourceIdentifier("https://x.test/"),
                               x509.UniformResourceIdentifier(
                                   "spiffe://example.org/ns/ops/sa/deployer")))
    assert allows({"san_uri": pattern}, peer) is matches


@pytest.mark.parametrize(("pattern", "matches"), [
    ("ops@example.org", True),
    ("*@example.org", True),
    ("ops@*", True),
    ("*", False),  # * never crosses "@"
    ("**", True),
    ("ops@*.org", True),
    ("*@evil.org", False),
])
def test_san_email(ca: CertificateAuthority, pattern: str, matches: bool) -> None:
    peer = make_peer(ca, sans=(x509.RFC822Name("ops@example.org"),))
    assert allows({"san_email": pattern}, peer) is matches


def test_san_email_star_cannot_swallow_a_second_domain() -> None:
    # (cryptography refuses to build such a SAN; another issuer might not)
    glob = compile_glob("*@example.org", "@")
    assert glob.fullmatch("x@example.org")
    assert not glob.fullmatch("x@evil.org@example.org")


def test_san_without_that_type_never_matches(ca: CertificateAuthority) -> None:
    peer = make_peer(ca, sans=(x509.DNSName("a.test"),))
    assert not allows({"san_uri": "**"}, peer)
    assert not allows({"san_email": "**"}, peer)


@pytest.mark.parametrize("pattern", ["ABCDEF", "abcdef", "00ABCDEF", "0xabcdef", "00:ab:cd:ef",
                                     "0X00ABCDEF", " ab:CD:ef "])
def test_serial_patterns_are_normalised(ca: CertificateAuthority, pattern: str) -> None:
    peer = make_peer(ca, serial=0xABCDEF)
    assert peer.serial_hex == "ABCDEF"
    assert allows({"serial": pattern}, peer)
    assert not allows({"serial": pattern}, make_peer(ca, serial=0xABCDEE))


def test_serial_regex(ca: CertificateAuthority) -> None:
    assert allows({"serial": "re:AB.*"}, make_peer(ca, serial=0xABCDEF))
    assert not allows({"serial": "re:ab.*"}, make_peer(ca, serial=0xABCDEF))


def test_fingerprint_pinning(ca: CertificateAuthority) -> None:
    pinned = make_peer(ca, "pinned")
    other = make_peer(ca, "pinned")  # same name, another key: another certificate
    fp = pinned.fingerprint_sha256
    with_colons = ":".join(fp[i:i + 2] for i in range(0, 64, 2)).upper()
    for pattern in (fp, fp.upper(), with_colons):
        assert allows({"fingerprint_sha256": pattern}, pinned)
        assert not allows({"fingerprint_sha256": pattern}, other)


def test_entry_fields_are_anded(ca: CertificateAuthority, other_ca: CertificateAuthority
                                ) -> None:
    entry = {"cn": "ops-*", "issuer_dn": "CN=Dev CA"}
    assert allows(entry, make_peer(ca, "ops-a"))
    assert not allows(entry, make_peer(other_ca, "ops-a"))
    assert not allows(entry, make_peer(ca, "dev-a"))
    assert not allows({"cn": "ops-a", "any": True}, None)


def test_entries_are_ored(ca: CertificateAuthority) -> None:
    p = policy({"name": "admin", "paths": ["/admin/*"],
                "allow": [{"cn": "root"},
                          {"san_uri": "spiffe://example.org/ns/ops/*"}]}, default="deny")
    mesh = make_peer(ca, "workload", sans=(x509.UniformResourceIdentifier(
        "spiffe://example.org/ns/ops/deployer"),))
    assert p.decide("/admin", "GET", make_peer(ca, "root")).allowed
    assert p.decide("/admin", "GET", mesh).allowed
    assert not p.decide("/admin", "GET", make_peer(ca, "alice")).allowed


# ----------------------------------------------------------------- configuration


@pytest.mark.parametrize(("entry", "key", "fragment"), [
    ({"cn": "re:ops-[a-"}, "authorization.rules[admin].allow[0].cn", "regular expression"),
    ({"san_uri": "re:(unclosed"}, "authorization.rules[admin].allow[0].san_uri",
     "regular expression"),
    ({"serial": "xyz"}, "authorization.rules[admin].allow[0].serial", "hexadecimal"),
    ({"serial": "AB*"}, "authorization.rules[admin].allow[0].serial", "hexadecimal"),
    ({"fingerprint_sha256": "abcd"}, "authorization.rules[admin].allow[0].fingerprint_sha256",
     "64 hex"),
])
def test_bad_pattern_names_the_rule(entry: dict, key: str, fragment: str) -> None:
    rules = read_rules(Path("/etc/svc.yaml"),
                       [{"name": "admin", "paths": ["/admin/*"], "allow": [entry]}])
    with pytest.raises(ConfigError) as info:
        compile_policy(rules, "deny", Path("/etc/svc.yaml"))
    assert info.value.key == key
    assert info.value.source == "/etc/svc.yaml"
    assert fragment in info.value.message


def test_bad_pattern_in_later_entry_names_its_index() -> None:
    rules = read_rules(Path("x.yaml"), [
        {"name": "ok", "paths": ["/"], "allow": [{"cn": "a"}]},
        {"name": "svc", "paths": ["/s"], "allow": [{"cn": "a"}, {"dn": "b", "cn": "re:("}]},
    ])
    with pytest.raises(ConfigError) as info:
        compile_policy(rules, source="x.yaml")
    assert info.value.key == "authorization.rules[svc].allow[1].cn"


@pytest.mark.parametrize(("path", "fragment"), [
    ("/v1/*/admin", "trailing '/*'"),
    ("/admin*", "trailing '/*'"),
    ("/a//b", "not a normalised path"),
    ("/a/../b", "not a normalised path"),
    ("/../b", "climbs"),
    ("/caf%C3%A9", "decoded"),
])
def test_bad_path_patterns(path: str, fragment: str) -> None:
    rules = read_rules(Path("x.yaml"), [{"name": "r", "paths": [path], "allow": []}])
    with pytest.raises(ConfigError) as info:
        compile_policy(rules, source="x.yaml")
    assert info.value.key == "authorization.rules[r].paths"
    assert fragment in info.value.message


def test_normalisers() -> None:
    assert normalise_serial("00:0a:BC") == "ABC"
    assert normalise_serial("0") == "0"
    with pytest.raises(ValueError):
        normalise_serial("")
    assert normalise_fingerprint("AA:" * 31 + "AA") == "aa" * 32
    with pytest.raises(ValueError):
        normalise_fingerprint("g" * 64)


YAML_FILE = """\
tls: {mode: none}
app: {factory: "demo.app:application"}
authorization:
  default: deny
  rules:
    - name: admin
      paths: ["/admin/*"]
      methods: [POST, PUT, DELETE]
      allow:
        - cn: "ops-*"
        - san_uri: "spiffe://example.org/ns/ops/*"
        - cn: "re:svc-[0-9]+"
          issuer_dn: "CN=Dev CA"
    - name: health
      paths: ["/healthz", "/status/*"]
      allow:
        - anonymous: true
    - name: pinned
      paths: ["/pinned"]
      allow:
        - fingerprint_sha256: "%(fp)s"
        - serial: "0a:bc"
        - any: true
"""

INI_FILE = """\
[tls]
mode = none

[app]
factory = demo.app:application

[authorization]
default = deny

[rule:admin]
paths = /admin/*
methods = POST PUT DELETE
allow =
    cn:ops-*
    san_uri:spiffe://example.org/ns/ops/*
    cn:re:svc-[0-9]+ & issuer_dn:CN=Dev CA

[rule:health]
paths =
    /healthz
    /status/*
allow =
    anonymous

[rule:pinned]
paths = /pinned
allow =
    fingerprint_sha256:%(fp)s
    serial:0a:bc
    any
"""


def test_yaml_and_ini_rules_are_equal(tmp_path: Path, ca: CertificateAuthority) -> None:
    fp = "AB:" * 31 + "AB"
    yaml_path = tmp_path / "svc.yaml"
    ini_path = tmp_path / "svc.ini"
    yaml_path.write_text(YAML_FILE % {"fp": fp})
    ini_path.write_text(INI_FILE % {"fp": fp})
    from_yaml = load_config(yaml_path, environ={}).authorization
    from_ini = load_config(ini_path, environ={}).authorization
    assert from_yaml == from_ini
    assert [r.name for r in from_yaml.rules] == ["admin", "health", "pinned"]
    # ... and they compile to policies that decide alike
    a = compile_policy(from_yaml.rules, from_yaml.default, yaml_path)
    b = compile_policy(from_ini.rules, from_ini.default, ini_path)
    peers = [None, make_peer(ca, "ops-x"), make_peer(ca, "svc-12"), make_peer(ca, "alice")]
    for path in ("/admin/x", "/healthz", "/status/db", "/pinned", "/nowhere"):
        for method in ("GET", "POST"):
            for peer in peers:
                assert a.decide(path, method, peer) == b.decide(path, method, peer)
    assert a.decide("/admin/x", "POST", peers[2]).allowed
    assert not a.decide("/admin/x", "POST", peers[3]).allowed


def test_bad_regex_in_a_config_file(tmp_path: Path) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text(YAML_FILE.replace('"ops-*"', '"re:ops-(["') % {"fp": "ab" * 32})
    authorization = load_config(path, environ={}).authorization
    with pytest.raises(ConfigError) as info:
        IdentityMiddleware.from_config(lambda e, s: [], load_config(path, environ={}).identity,
                                       authorization, source=path)
    assert str(info.value).startswith(f"{path}: authorization.rules[admin].allow[0].cn: ")


# ------------------------------------------------------------ through the middleware


def test_denied_request_gets_a_constant_403_and_a_log_line(
        ca: CertificateAuthority, caplog: pytest.LogCaptureFixture) -> None:
    called = []

    def app(environ: dict, start_response: Any) -> list:
        called.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b"secret"]

    mw = IdentityMiddleware(app, rules=[
        {"name": "admin", "paths": ["/admin/*"], "allow": [{"cn": "ops-*"}]}])
    mallory = make_peer(ca, dn((NameOID.ORGANIZATION_NAME, "Evil <script>"),
                               (NameOID.COMMON_NAME, "mallory")))
    caplog.set_level(logging.INFO, logger="securewsgi.authz")
    bodies = set()
    for peer in (mallory, None):
        response = webob.Request.blank(
            "/admin/users?q=<x>", environ={"securewsgi.tls_peer": peer}).get_response(mw)
        assert response.status == "403 Forbidden"
        assert response.content_type == "text/plain"
        bodies.add(response.body)
        assert b"mallory" not in response.body and b"admin" not in response.body
    assert len(bodies) == 1
    assert called == []
    lines = [r.getMessage() for r in caplog.records if r.name == "securewsgi.authz"]
    assert len(lines) == 2
    # the subject as `printable` writes it: RFC 4514's "\<" becomes "\\<" in the log
    assert "rule admin" in lines[0] and printable(mallory.subject) in lines[0]
    assert "O=Evil \\\\<script\\\\>" in lines[0]
    assert "rule admin" in lines[1] and "anonymous" in lines[1]
    assert all(r.levelno == logging.WARNING for r in caplog.records
               if r.name == "securewsgi.authz")
    ok = webob.Request.blank("/admin/users", environ={
        "securewsgi.tls_peer": make_peer(ca, "ops-1")}).get_response(mw)
    assert ok.status_int == 200 and ok.body == b"secret"


def test_cookbook_health_check_anonymous_in_optional_mode(ca: CertificateAuthority) -> None:
    mw = IdentityMiddleware(lambda e, s: s("200 OK", []) or [b"ok"], default="deny", rules=[
        {"name": "health", "paths": ["/healthz"], "methods": ["GET"],
         "allow": [{"anonymous": True}]},
        {"name": "api", "paths": ["/*"], "allow": [{"any": True}]},
    ])

    def status(path: str, peer: Optional[PeerIdentity], method: str = "GET") -> int:
        return webob.Request.blank(path, method=method, environ={
            "securewsgi.tls_peer": peer}).get_response(mw).status_int

    assert status("/healthz", None) == 200
    assert status("/healthz", None, "HEAD") == 200
    assert status("/healthz", None, "POST") == 403  # falls through to "api"
    assert status("/servers", None) == 403
    assert status("/servers", make_peer(ca)) == 200


# ---------------------------------------------------------------------- properties

SEPARATED = {"san_dns": ".", "san_uri": "/", "san_email": "@"}


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(sorted(SEPARATED)),
       pattern=st.text(alphabet="ab*.@/", max_size=10),
       value=st.text(alphabet="ab.@/", max_size=12))
def test_single_star_never_crosses_the_separator(field: str, pattern: str, value: str) -> None:
    if "**" in pattern:
        pattern = pattern.replace("**", "*")  # keep single stars only
        if "**" in pattern:
            return
    separator = SEPARATED[field]
    if compile_glob(pattern, separator).fullmatch(value):
        # every separator in the value was written literally in the pattern
        assert value.count(separator) == pattern.count(separator)


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.text(alphabet="ab-", min_size=0, max_size=4), min_size=1,
                      max_size=4))
def test_double_star_crosses_separators(parts: list) -> None:
    value = ".".join(parts)
    assert compile_glob("**", ".").fullmatch(value)
    assert bool(compile_glob("*", ".").fullmatch(value)) is ("." not in value)


@settings(max_examples=200, deadline=None)
@given(pattern=st.text(alphabet=string.ascii_letters + "*.-", max_size=12),
       value=st.text(alphabet=string.ascii_letters + ".-", max_size=12))
def test_glob_agrees_with_a_reference_implementation(pattern: str, value: str) -> None:
    """A different construction of the same semantics: split on '**' and require the
    pieces in between to match with single stars segment-wise."""
    expected = re.fullmatch(
        ".*".join("[^.]*".join(re.escape(c) for c in piece.split("*"))
                  for piece in pattern.split("**")), value, re.DOTALL)
    assert bool(compile_glob(pattern, ".").fullmatch(value)) == bool(expected)
