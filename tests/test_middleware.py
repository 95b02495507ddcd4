"""`IdentityMiddleware` as a component: constructors, validation, responses, and the
Paste Deploy filter (the shipped etc/api-paste.ini loaded with paste.deploy)."""
from __future__ import annotations

import ipaddress
import json
import shutil
from pathlib import Path
from typing import Any, Optional

import pytest
import trustme
import webob
from cryptography import x509
from paste.deploy import loadapp
from support import memory_peer

from securewsgi import IdentityMiddleware, PeerIdentity
from securewsgi.config import (
    AllowEntry,
    AuthorizationConfig,
    IdentityConfig,
    RuleConfig,
    load_config,
)
from securewsgi.errors import ConfigError
from securewsgi.identity.middleware import filter_factory
from securewsgi.pki import CertificateAuthority

ETC = Path(__file__).resolve().parent.parent / "etc"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def peer(ca: trustme.CA, cn: str) -> PeerIdentity:
    return memory_peer(ca, cn)


def hello(environ: dict, start_response: Any) -> list:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def call(app: Any, path: str = "/", who: Optional[PeerIdentity] = None, method: str = "GET",
         **environ: Any) -> webob.Response:
    return webob.Request.blank(path, method=method, environ={
        "securewsgi.tls_peer": who, **environ}).get_response(app)


# ---------------------------------------------------------------- constructors


def test_defaults_allow_everything_and_only_add_identity() -> None:
    mw = IdentityMiddleware(hello)
    assert call(mw, "/admin").status_int == 200
    assert not mw.policy.active


def test_rules_as_dicts_and_as_rule_configs_are_equivalent(ca: trustme.CA) -> None:
    issuer = x509.load_pem_x509_certificate(ca.cert_pem.bytes()).subject.rfc4514_string()
    as_dicts = IdentityMiddleware(hello, default="deny", rules=[
        {"name": "admin", "paths": ["/admin/*"], "methods": ["post"],
         "allow": [{"cn": "ops-*", "issuer_dn": issuer}]},
        {"name": "health", "paths": "/healthz", "allow": [{"anonymous": "yes"}]},
    ])
    as_configs = IdentityMiddleware(hello, default="deny", rules=[
        RuleConfig("admin", ("/admin/*",), ("POST",),
                   (AllowEntry((("cn", "ops-*"), ("issuer_dn", issuer))),)),
        RuleConfig("health", ("/healthz",), (), (AllowEntry((("anonymous", "true"),)),)),
    ])
    cases = [("/admin/x", "POST", peer(ca, "ops-1")), ("/admin/x", "POST", None),
             ("/admin/x", "GET", None), ("/healthz", "GET", None), ("/x", "GET", None)]
    for path, method, who in cases:
        assert call(as_dicts, path, who, method).status_int == \
            call(as_configs, path, who, method).status_int
    assert [call(as_dicts, p, w, m).status_int for p, m, w in cases] == [
        200, 403, 403, 200, 403]


@pytest.mark.parametrize(("kwargs", "key", "fragment"), [
    ({"remote_user": "email"}, "remote_user", "must be one of"),
    ({"default": "maybe"}, "default", "must be one of"),
    ({"trusted_proxies": ["10.0.0.0/8", "nonsense"]}, "trusted_proxies", "nonsense"),
    ({"trusted_proxies": [42]}, "trusted_proxies", "CIDR"),
    ({"forwarded_cert_header": "X Bad Header"}, "forwarded_cert_header", "header name"),
    ({"rules": [{"name": "r", "paths": ["/x"], "allow": [{"cm": "x"}]}]},
     "rules[r].allow[0].cm", "did you mean 'cn'"),
    ({"rules": [{"name": "r", "paths": ["/x"], "allow": [{"cn": "re:("}]}]},
     "rules[r].allow[0].cn", "regular expression"),
    ({"rules": [{"paths": ["/x"]}]}, "rules[0].name", "needs a name"),
    ({"rules": [{"name": "r", "paths": ["x"]}]}, "rules[r].paths", "start with '/'"),
    ({"rules": [{"name": "r", "paths": ["/x"]}, {"name": "r", "paths": ["/y"]}]},
     "rules[r]", "duplicate"),
    ({"rules": {"name": "r"}}, "rules", "list of rules"),
    # one duplicate check for ready RuleConfig objects and dicts alike
    ({"rules": [RuleConfig("r", ("/x",)), {"name": "r", "paths": ["/y"]}]},
     "rules[r]", "duplicate rule name"),
    ({"rules": [{"name": "r", "path": ["/x"]}]}, "rules[r].path",
     "unknown key (did you mean 'paths'?)"),
])
def test_invalid_arguments_raise_config_error(kwargs: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        IdentityMiddleware(hello, **kwargs)
    assert info.value.source == "IdentityMiddleware"
    assert info.value.key == key
    assert fragment in info.value.message


def test_trusted_proxies_accepts_strings_networks_and_one_string() -> None:
    for value in ("10.0.0.0/8 ::1", ["10.0.0.0/8", "::1"],
                  [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")]):
        mw = IdentityMiddleware(hello, trusted_proxies=value)
        assert "10.1.1.1" in mw.trusted_proxies and "::1" in mw.trusted_proxies


def test_from_config(tmp_path: Path, ca: trustme.CA) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text(
        "tls: {mode: none}\n"
        "app: {factory: 'x:y'}\n"
        "identity: {remote_user: cn, trusted_proxies: [10.0.0.0/8],"
        " forwarded_cert_header: x-ssl-client-cert}\n"
        "authorization:\n"
        "  default: deny\n"
        "  rules:\n"
        "    - {name: health, paths: [/healthz], allow: [{anonymous: true}]}\n"
        "    - {name: all, paths: ['/*'], allow: [{cn: 'ops-*'}]}\n")
    cfg = load_config(path, environ={})
    mw = IdentityMiddleware.from_config(hello, cfg.identity, cfg.authorization, source=path)
    assert call(mw, "/healthz").status_int == 200
    assert call(mw, "/x").status_int == 403
    assert call(mw, "/x", peer(ca, "ops-2")).status_int == 200
    assert mw.forwarded.environ_key == "HTTP_X_SSL_CLIENT_CERT"
    assert "10.2.3.4" in mw.trusted_proxies
    assert mw.remote_user == "cn"


def test_from_config_with_defaults() -> None:
    mw = IdentityMiddleware.from_config(hello, IdentityConfig(), AuthorizationConfig())
    assert call(mw).status_int == 200


def test_bad_pattern_from_config_names_file_and_rule(tmp_path: Path) -> None:
    rules = (RuleConfig("admin", ("/admin/*",), (), (AllowEntry((("san_dns", "re:[z-a]"),)),)),)
    with pytest.raises(ConfigError) as info:
        IdentityMiddleware.from_config(hello, IdentityConfig(), AuthorizationConfig(
            "allow", rules), source=tmp_path / "svc.yaml")
    assert str(info.value).startswith(
        f"{tmp_path / 'svc.yaml'}: authorization.rules[admin].allow[0].san_dns: ")


# ------------------------------------------------------------------- responses


def test_403_and_400_bodies_are_constant(ca: trustme.CA) -> None:
    mw = IdentityMiddleware(hello, rules=[
        {"name": "admin", "paths": ["/admin/*"], "allow": [{"cn": "ops-*"}]}])
    denied = {call(mw, path, who).body for path, who in (
        ("/admin/a", None), ("/admin/<script>", peer(ca, "mallory")),
        ("/admin/x?secret=1", peer(ca, "eve")))}
    assert denied == {b"403 Forbidden: access to this resource is not allowed\n"}
    bad = call(mw, "/", RAW_PATH_INFO="/admin%2F<b>", PATH_INFO="/admin/<b>")
    assert bad.status == "400 Bad Request"
    assert bad.body == b"400 Bad Request: ambiguous request path\n"
    assert bad.headers["Content-Length"] == str(len(bad.body))


def test_peer_is_set_even_when_refused(ca: trustme.CA) -> None:
    """An outer access log reads securewsgi.peer after a 403/400, too."""
    mw = IdentityMiddleware(hello, default="deny")
    environ = {"securewsgi.tls_peer": peer(ca, "logme"), "securewsgi.peer": "planted"}
    request = webob.Request.blank("/", environ=environ)
    assert request.get_response(mw).status_int == 403
    assert request.environ["securewsgi.peer"].common_name == "logme"


def test_app_response_passes_through_untouched() -> None:
    def streaming(environ: dict, start_response: Any) -> Any:
        start_response("201 Created", [("X-A", "1")])
        yield b"a"
        yield b"b"

    response = call(IdentityMiddleware(streaming, rules=[
        {"name": "r", "paths": ["/x"], "allow": [{"anonymous": True}]}]), "/x")
    assert response.status == "201 Created"
    assert response.headers["X-A"] == "1"
    assert response.body == b"ab"


# ---------------------------------------------------------------- Paste Deploy


def test_filter_factory_directly(tmp_path: Path, ca: trustme.CA) -> None:
    (tmp_path / "policy.yaml").write_text(
        "default: deny\nrules:\n  - {name: ops, paths: ['/*'], allow: [{cn: 'ops-*'}]}\n")
    make = filter_factory({"here": str(tmp_path), "__file__": str(tmp_path / "api-paste.ini")},
                          remote_user="cn", trusted_proxies="10.0.0.0/8 fd00::/8",
                          forwarded_cert_header="x-ssl-client-cert",
                          policy_file="policy.yaml")
    mw = make(hello)
    assert isinstance(mw, IdentityMiddleware)
    assert call(mw).status_int == 403
    assert call(mw, who=peer(ca, "ops-9")).status_int == 200
    assert "fd00::1" in mw.trusted_proxies
    assert mw.forwarded.environ_key == "HTTP_X_SSL_CLIENT_CERT"


@pytest.mark.parametrize(("local_conf", "policy", "key", "fragment"), [
    ({"remote_usr": "cn"}, None, "remote_usr", "did you mean 'remote_user'"),
    ({"remote_user": "uid"}, None, "remote_user", "must be one of"),
    ({"trusted_proxies": "10.0.0.0/8 bogus"}, None, "trusted_proxies", "bogus"),
    ({"default": "perhaps"}, None, "default", "must be one of"),
    ({"policy_file": "missing.yaml"}, None, "policy_file", "no such file"),
    ({"policy_file": "p.yaml", "default": "allow"}, "default: deny\n", "default",
     "also set in"),
])
def test_filter_factory_errors(tmp_path: Path, local_conf: dict, policy: Optional[str],
                               key: str, fragment: str) -> None:
    if policy is not None:
        (tmp_path / "p.yaml").write_text(policy)
    paste_file = tmp_path / "api-paste.ini"
    with pytest.raises(ConfigError) as info:
        filter_factory({"here": str(tmp_path), "__file__": str(paste_file)}, **local_conf)
    assert info.value.source == str(paste_file)
    assert info.value.key == key
    assert fragment in info.value.message


@pytest.mark.parametrize(("policy", "key", "fragment"), [
    ("rules:\n  - {name: a, paths: [/a], allow: [{cn: 're:['}]}\n", "rules[a].allow[0].cn",
     "regular expression"),
    ("rule: []\n", "rule", "did you mean 'rules'"),
    ("default: never\n", "default", "must be one of"),
    ("rules: {name: a}\n", "rules", "list of rules"),
    ("- just a list\n", None, "mapping"),
    ("rules: [\n", None, "invalid YAML"),
])
def test_policy_file_errors_name_the_policy_file(tmp_path: Path, policy: str,
                                                 key: Optional[str], fragment: str) -> None:
    (tmp_path / "policy.yaml").write_text(policy)
    with pytest.raises(ConfigError) as info:
        filter_factory({"here": str(tmp_path), "__file__": str(tmp_path / "x.ini")},
                       policy_file="policy.yaml")
    assert info.value.source == str(tmp_path / "policy.yaml")
    assert info.value.key == key
    assert fragment in info.value.message


def test_shipped_policy_equals_the_same_rules_in_a_service_file(tmp_path: Path) -> None:
    """etc/policy.yaml uses exactly the schema of the `authorization` section."""
    import yaml

    policy = yaml.safe_load((ETC / "policy.yaml").read_text())
    service = tmp_path / "svc.yaml"
    service.write_text(yaml.safe_dump({"tls": {"mode": "none"}, "app": {"factory": "a:b"},
                                       "authorization": policy}))
    expected = load_config(service, environ={}).authorization
    from securewsgi.identity.middleware import _read_policy_file

    default, rules = _read_policy_file(ETC / "policy.yaml")
    assert (default, rules) == (expected.default, expected.rules)


def test_shipped_paste_pipeline(ca: trustme.CA) -> None:
    app = loadapp(f"config:{ETC / 'api-paste.ini'}", name="main")
    assert isinstance(app, IdentityMiddleware)
    assert app.remote_user == "cn"

    def get(path: str, who: Optional[PeerIdentity], method: str = "GET") -> webob.Response:
        return call(app, path, who, method)

    ops = peer(ca, "ops-alice")
    dev = peer(ca, "dev-bob")
    # trustme writes no URI names: the SPIFFE workload comes from securewsgi's own CA
    cert, _ = CertificateAuthority.create().issue_client(
        "workload", san_uri=["spiffe://example.org/ns/ops/sa/deployer"])
    mesh = PeerIdentity.from_certificate(cert)
    health = get("/healthz", None)
    assert health.status_int == 200
    assert json.loads(health.body)["client"] is None
    assert get("/admin/users", ops, "POST").status_int == 200
    assert get("/admin/users", mesh, "DELETE").status_int == 200
    assert get("/admin/users", dev, "POST").status_int == 403
    assert get("/admin/users", dev).status_int == 200  # admin-read: any verified client
    assert get("/admin/users", None).status_int == 403
    assert get("//admin/./users", None).status_int == 403
    body = json.loads(get("/servers", ops).body)
    assert body["client"]["common_name"] == "ops-alice"
    assert body["tls"]["REMOTE_USER"] == "ops-alice"
    assert body["tls"]["SSL_CLIENT_VERIFY"] == "SUCCESS"


def test_paste_pipeline_in_a_copy_with_trusted_proxies(tmp_path: Path,
                                                      ca: trustme.CA) -> None:
    import urllib.parse

    shutil.copy(ETC / "policy.yaml", tmp_path / "policy.yaml")
    ini = (ETC / "api-paste.ini").read_text().replace(
        "# trusted_proxies = 10.0.0.0/8 fd00::/8", "trusted_proxies = 10.0.0.0/8 fd00::/8")
    assert "\ntrusted_proxies = 10.0.0.0/8" in ini
    (tmp_path / "api-paste.ini").write_text(ini)
    app = loadapp(f"config:{tmp_path / 'api-paste.ini'}")
    pem = ca.issue_cert(common_name="ops-proxied").cert_chain_pems[0].bytes().decode()
    header = {"X-Forwarded-Client-Cert": f'Cert="{urllib.parse.quote(pem, safe="")}"'}
    request = webob.Request.blank("/admin/x", method="POST", headers=header, environ={
        "securewsgi.tls_peer": None, "REMOTE_ADDR": "10.9.8.7"})
    response = request.get_response(app)
    assert response.status_int == 200
    assert json.loads(response.body)["client"]["source"] == "proxy"
    request = webob.Request.blank("/admin/x", method="POST", headers=header, environ={
        "securewsgi.tls_peer": None, "REMOTE_ADDR": "192.0.2.1"})
    assert request.get_response(app).status_int == 403


def test_paste_entry_point_is_registered() -> None:
    from importlib.metadata import entry_points

    groups = entry_points()
    found = groups.select(group="paste.filter_factory") if hasattr(groups, "select") else \
        groups.get("paste.filter_factory", ())  # Python 3.9
    # de-duplicated: an editable install can list its distribution twice on 3.9
    (ep,) = {e.value: e for e in found if e.name == "identity"
             and e.value.startswith("securewsgi")}.values()
    assert ep.load() is filter_factory

