"""The config loader: defaults, paths, ${VAR}, aliases, INI == YAML, and every error
class as one line that names the file and the key."""
from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest
from support import PKIFiles

from securewsgi.config import load_config
from securewsgi.config.dump import config_to_data
from securewsgi.errors import ConfigError


@pytest.fixture()
def write(tmp_path: Path, test_pki: PKIFiles):
    def write(text: str, name: str = "service.yaml") -> Path:
        path = tmp_path / name
        body = textwrap.dedent(text).replace("PKI", str(test_pki.dir))
        path.write_text(body)
        return path

    return write


MINIMAL = """
tls:
  certfile: PKI/server.pem
  keyfile: PKI/server-key.pem
app:
  factory: securewsgi.demo:app
"""


def test_defaults(write) -> None:
    config = load_config(write(MINIMAL))
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8443
    assert config.server.max_connections == 1024
    assert config.server.handshake_timeout == 10
    assert config.tls.mode == "server"
    assert config.tls.min_version == "TLSv1.2"
    assert config.tls.max_version is None
    assert config.identity.remote_user == "none"
    assert config.authorization.default == "allow"
    assert config.logging.access_log == "-"


def test_ca_certs_without_mode_means_mutual_like_oslo(write) -> None:
    config = load_config(write(MINIMAL.replace("tls:\n", "tls:\n  ca_certs: PKI/ca.pem\n")))
    assert config.tls.mode == "mutual"


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path,
                                                             test_pki: PKIFiles) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "pki").symlink_to(test_pki.dir)
    path = tmp_path / "conf" / "svc.yaml"
    path.write_text("tls: {certfile: pki/server.pem, keyfile: pki/server-key.pem}\n"
                    "app: {factory: 'securewsgi.demo:app', python_path: [pki]}\n")
    config = load_config(path)
    assert config.tls.certfile == tmp_path / "conf" / "pki" / "server.pem"
    assert config.app.python_path == (tmp_path / "conf" / "pki",)


def test_environment_variables(write) -> None:
    text = MINIMAL.replace("tls:\n", "tls:\n  key_password: ${PASS}\n  min_version: "
                           "${MINV:-TLSv1.3}\n") + "server:\n  port: ${PORT}\n"
    config = load_config(write(text), environ={"PASS": "s3cret", "PORT": "9443"})
    assert config.tls.key_password == "s3cret"
    assert config.tls.min_version == "TLSv1.3"
    assert config.server.port == 9443
    with pytest.raises(ConfigError, match=r"service\.yaml: server\.port: environment variable "
                                          r"PORT is not set"):
        load_config(write(text), environ={"PASS": "x"})


@pytest.mark.parametrize(("alias", "value", "field", "expected"), [
    ("cert_reqs", "CERT_REQUIRED", "mode", "mutual"),
    ("cert_reqs", "CERT_OPTIONAL", "mode", "optional"),
    ("cert_reqs", "CERT_NONE", "mode", "server"),
    ("ssl_version", "PROTOCOL_TLSv1_2", "min_version", "TLSv1.2"),
    ("ssl_version", "TLSv1_2", "min_version", "TLSv1.2"),
    ("version", "TLSv1_3", "min_version", "TLSv1.3"),
    ("do_handshake_on_connect", "false", "mode", "server"),
])
def test_aliases(write, alias: str, value: str, field: str, expected: str) -> None:
    text = MINIMAL.replace("tls:\n", f"tls:\n  ca_certs: PKI/ca.pem\n  {alias}: {value}\n")
    if alias != "cert_reqs":
        text = text.replace("ca_certs: PKI/ca.pem", "mode: server")
    assert getattr(load_config(write(text)).tls, field) == expected


def test_oslo_file_aliases(write, test_pki: PKIFiles) -> None:
    config = load_config(write("""
        tls:
          cert_file: PKI/server.pem
          key_file: PKI/server-key.pem
          ca_file: PKI/ca.pem
        app: {factory: "securewsgi.demo:app"}
    """))
    assert config.tls.certfile == test_pki.server_cert
    assert config.tls.keyfile == test_pki.server_key
    assert config.tls.ca_certs == test_pki.ca_pem
    assert config.tls.mode == "mutual"


def test_ini_and_yaml_are_the_same_service(write) -> None:
    yaml_config = load_config(write("""
        server: {port: 9000, keepalive: 5, workers: 1}
        tls: {mode: mutual, certfile: PKI/server.pem, keyfile: PKI/server-key.pem,
              ca_certs: PKI/ca.pem}
        app: {factory: "securewsgi.demo:app"}
        identity: {remote_user: cn, trusted_proxies: [10.0.0.0/8, "fd00::/8"]}
        authorization:
          default: deny
          rules:
            - name: admin
              paths: [/admin/*]
              methods: [POST, PUT]
              allow:
                - cn: ops-*
                - {san_uri: "spiffe://example.org/*", issuer_dn: "CN=Dev CA"}
            - name: health
              paths: [/healthz]
              allow: [{anonymous: true}]
        logging: {level: DEBUG, access_log: false, format: json}
    """))
    ini_config = load_config(write("""
        [server]
        port = 9000
        keepalive = 5
        workers = 1
        [tls]
        mode = mutual
        certfile = PKI/server.pem
        keyfile = PKI/server-key.pem
        ca_certs = PKI/ca.pem
        [app]
        factory = securewsgi.demo:app
        [identity]
        remote_user = cn
        trusted_proxies = 10.0.0.0/8 fd00::/8
        [authorization]
        default = deny
        [rule:admin]
        paths = /admin/*
        methods = POST PUT
        allow =
            cn:ops-*
            san_uri:spiffe://example.org/* & issuer_dn:CN=Dev CA
        [rule:health]
        paths = /healthz
        allow = anonymous
        [logging]
        level = DEBUG
        access_log = false
        format = json
    """, name="service.ini"))
    assert yaml_config.server == ini_config.server
    assert yaml_config.tls == ini_config.tls
    assert yaml_config.identity == ini_config.identity
    assert yaml_config.authorization == ini_config.authorization
    assert yaml_config.logging == ini_config.logging
    assert ini_config.identity.trusted_proxies[1] == ipaddress.ip_network("fd00::/8")


ERRORS = [
    # (text appended/changed, key named, cause)
    ("server:\n  prot: 8443\n", "server.prot", "unknown key (did you mean 'port'?)"),
    ("servr:\n  port: 1\n", "servr", "unknown section (did you mean 'server'?)"),
    ("server:\n  port: 70000\n", "server.port", "must be between 0 and 65535"),
    ("server:\n  port: https\n", "server.port", "expected a whole number"),
    ("server:\n  handshake_timeout: 0\n", "server.handshake_timeout", "must be > 0"),
    ("server:\n  keepalive: maybe\n", "server.keepalive", "expected true, false or a number"),
    ("server:\n  workers: none\n", "server.workers", "expected a whole number"),
    ("server:\n  max_http_version: HTTP/2\n", "server.max_http_version", "must be one of"),
    ("logging:\n  format: xml\n", "logging.format", "must be one of text, json"),
    ("identity:\n  remote_user: email\n", "identity.remote_user", "must be one of"),
    ("identity:\n  trusted_proxies: [10.0.0.300/8]\n", "identity.trusted_proxies",
     "not an IP address or CIDR"),
    ("authorization:\n  default: maybe\n", "authorization.default", "must be one of allow"),
    ("authorization:\n  rules:\n    - name: a\n      paths: [admin]\n",
     "authorization.rules[a].paths", "path patterns start with '/'"),
    ("authorization:\n  rules:\n    - name: a\n      paths: [/a]\n      allow: [{cm: x}]\n",
     "authorization.rules[a].allow[0].cm", "unknown allow field (did you mean 'cn'?)"),
    ("authorization:\n  rules:\n    - paths: [/a]\n", "authorization.rules[0].name",
     "every rule needs a name"),
    # a misspelt key is named as such, not reported as the key it was meant to be
    ("authorization:\n  rules:\n    - {name: a, path: [/a]}\n",
     "authorization.rules[a].path", "unknown key (did you mean 'paths'?)"),
    ("authorization:\n  rules:\n    - {nmae: a, paths: [/a]}\n",
     "authorization.rules[0].nmae", "unknown key (did you mean 'name'?)"),
    ("authorization:\n  rules:\n    - {name: a, paths: [/a]}\n    - {name: a, paths: [/b]}\n",
     "authorization.rules[a]", "duplicate rule name"),
]


@pytest.mark.parametrize(("extra", "key", "cause"), ERRORS)
def test_error_names_file_key_and_cause(write, extra: str, key: str, cause: str) -> None:
    path = write(MINIMAL + extra)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: ")
    assert cause in message
    assert "\n" not in message


TLS_ERRORS = [
    ("mode: mutual", "tls.ca_certs", "required when tls.mode is mutual"),
    ("mode: optional", "tls.ca_certs", "required when tls.mode is optional"),
    ("mode: strict", "tls.mode", "must be one of none, server, optional, mutual"),
    ("min_version: TLSv1.1", "tls.min_version", "below TLS 1.2"),
    ("min_version: TLSv1", "tls.min_version", "below TLS 1.2"),
    ("min_version: TLSv1.3\n  max_version: TLSv1.2", "tls.max_version", "is below min_version"),
    ("ssl_version: PROTOCOL_TLSv1", "tls.ssl_version", "below TLS 1.2"),
    ("ssl_version: PROTOCOL_SSLv3", "tls.ssl_version", "below TLS 1.2"),
    ("cert_reqs: CERT_MAYBE", "tls.cert_reqs", "must be one of CERT_NONE"),
    ("cert_file: PKI/server.pem", "tls.cert_file", "alias of tls.certfile; give only one"),
    ("ca_file: PKI/ca.pem\n  ca_certs: PKI/ca.pem", "tls.ca_file", "give only one"),
    ("crl_file: PKI/crl.pem", "tls.crl_file", "needs tls.ca_certs"),
    ("ca_certs: PKI/nope.pem", "tls.ca_certs", "no such file or directory"),
    ("reload_interval: -1", "tls.reload_interval", "must be >= 0"),
    # suggestions name the documented key, not its alias (key_file, cert_file)
    ("key_fiel: PKI/server-key.pem", "tls.key_fiel", "unknown key (did you mean 'keyfile'?)"),
    ("cert_fiel: PKI/server.pem", "tls.cert_fiel", "unknown key (did you mean 'certfile'?)"),
    ("suppress_ragged_eofs: sometimes", "tls.suppress_ragged_eofs", "expected true or false"),
]


@pytest.mark.parametrize(("extra", "key", "cause"), TLS_ERRORS)
def test_tls_errors(write, extra: str, key: str, cause: str) -> None:
    path = write(MINIMAL.replace("tls:\n", f"tls:\n  {extra}\n"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {key}: ")
    assert cause in str(info.value)


@pytest.mark.parametrize(("typo", "suggested"), [
    ("ca_fil", "ca_certs"), ("ssl_versio", "min_version"), ("cert_req", "mode")])
def test_a_typo_of_an_alias_suggests_the_documented_key(write, typo: str,
                                                       suggested: str) -> None:
    """`ca_fil` is closest to the alias `ca_file`, and closer to `crl_file` than to
    `ca_certs`: the suggestion is the key `ca_file` stands for."""
    path = write(MINIMAL.replace("tls:\n", f"tls:\n  {typo}: x\n"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: tls.{typo}: unknown key (did you mean {suggested!r}?)"


@pytest.mark.parametrize("value", ["true", "false"])
def test_suppress_ragged_eofs_is_accepted_and_has_no_effect(write, value: str) -> None:
    """Kept for code that passed it to ssl.wrap_socket; a client's TCP close without
    close_notify ends its connection either way, so nothing reads it."""
    config = load_config(write(MINIMAL.replace("tls:\n", f"tls:\n  suppress_ragged_eofs: "
                                                           f"{value}\n")))
    assert config.tls == load_config(write(MINIMAL)).tls
    assert "suppress_ragged_eofs" not in config_to_data(config)["tls"]  # --print-config


def test_missing_certificate_file(write, test_pki: PKIFiles) -> None:
    path = write(MINIMAL.replace("server.pem", "missing.pem"))
    with pytest.raises(ConfigError, match=r"tls\.certfile: no such file or directory: .*"
                                          r"missing\.pem"):
        load_config(path)


@pytest.mark.parametrize(("text", "cause"), [
    ("tls: [1, 2\n", "invalid YAML: line"),
    ("- just\n- a list\n", "the top level must be a mapping"),
])
def test_broken_yaml(write, text: str, cause: str) -> None:
    with pytest.raises(ConfigError, match=cause):
        load_config(write(text))


def test_broken_ini_and_unknown_suffix(write) -> None:
    with pytest.raises(ConfigError, match="invalid INI"):
        load_config(write("port = 1\n", name="x.ini"))
    with pytest.raises(ConfigError, match="unknown file type"):
        load_config(write(MINIMAL, name="x.toml"))
    with pytest.raises(ConfigError, match="no such file"):
        load_config(write(MINIMAL).with_name("absent.yaml"))


def test_app_section_errors(write) -> None:
    with pytest.raises(ConfigError, match=r": app: set app.factory"):
        load_config(write(MINIMAL.replace("  factory: securewsgi.demo:app\n", "  name: x\n")))
    with pytest.raises(ConfigError, match=r"app\.factory: expected 'package.module:attribute'"):
        load_config(write(MINIMAL.replace("securewsgi.demo:app", "securewsgi.demo")))
