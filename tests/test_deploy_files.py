"""The shipped deployment examples (etc/deploy) stay valid: YAML parses, Kubernetes
objects fit together, every securewsgi service file passes `--check` with a real PKI,
and the documented commands match the templates. (nginx and HAProxy run the proxy
files for real in test_load_balancers.py.)"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import DEPLOY, REPO, PKIFiles, run_command

from securewsgi.config import load_config
from securewsgi.identity.authz import compile_policy

YAML_FILES = sorted(DEPLOY.rglob("*.yaml"))
SERVICE_FILES = ["nginx/backend-http.yaml", "nginx/backend-mtls.yaml", "haproxy/backend.yaml"]
K8S = DEPLOY / "kubernetes"


def _documents(path: Path) -> list[Any]:
    return list(yaml.safe_load_all(path.read_text()))


def _k8s_objects() -> dict[str, dict]:
    """kind -> the object, from every manifest in etc/deploy/kubernetes."""
    objects = [doc for path in sorted(K8S.glob("*.yaml")) for doc in _documents(path)]
    kinds = [obj["kind"] for obj in objects]
    assert len(kinds) == len(set(kinds)), kinds
    return {obj["kind"]: obj for obj in objects}


def _check(config: Path, tmp_path: Path, **env: str) -> str:
    """`securewsgi-run --config FILE --check` as a user (or systemd) would run it."""
    result = run_command("securewsgi-run", "--config", str(config), "--check",
                         cwd=str(tmp_path), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("OK")
    return result.stdout


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    documents = _documents(path)
    assert documents and all(isinstance(doc, dict) for doc in documents)


def test_kubernetes_example_has_the_expected_objects() -> None:
    objects = _k8s_objects()
    assert set(objects) == {"ConfigMap", "Deployment", "Service", "Certificate"}
    for obj in objects.values():
        assert obj["apiVersion"] and obj["metadata"]["name"]
    assert objects["Certificate"]["apiVersion"] == "cert-manager.io/v1"


def _container(objects: dict[str, dict]) -> dict:
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _mount(objects: dict[str, dict], volume_kind: str) -> tuple[dict, dict]:
    """(volume, volumeMount) of the Deployment's only volume of `volume_kind`."""
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if volume_kind in v]
    (mount,) = [m for m in _container(objects)["volumeMounts"] if m["name"] == volume["name"]]
    return volume, mount


def test_kubernetes_objects_refer_to_each_other() -> None:
    """Names, labels, ports and paths agree across the four files."""
    objects = _k8s_objects()
    pod = objects["Deployment"]["spec"]["template"]
    container = _container(objects)
    config_volume, config_mount = _mount(objects, "configMap")
    tls_volume, tls_mount = _mount(objects, "secret")
    assert config_volume["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    assert tls_volume["secret"]["secretName"] == objects["Certificate"]["spec"]["secretName"]
    config_file = container["command"][container["command"].index("--config") + 1]
    assert config_file == f"{config_mount['mountPath']}/service.yaml"
    assert "service.yaml" in objects["ConfigMap"]["data"]
    assert not any("subPath" in m for m in container["volumeMounts"])  # rotation unseen
    assert tls_mount["readOnly"] is True
    labels = pod["metadata"]["labels"]
    assert objects["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objects["Service"]["spec"]["selector"].items() <= labels.items()
    port_names = {port["name"] for port in container["ports"]}
    assert {p["targetPort"] for p in objects["Service"]["spec"]["ports"]} <= port_names
    probe = container["readinessProbe"]["httpGet"]
    assert (probe["scheme"], probe["path"], probe["port"]) == ("HTTPS", "/healthz", "https")


@pytest.fixture
def k8s_service_file(tmp_path: Path, test_pki: PKIFiles) -> Path:
    """The ConfigMap's service.yaml, with the Secret's mount path pointing at a test PKI
    laid out as cert-manager writes it (tls.crt, tls.key, ca.crt)."""
    objects = _k8s_objects()
    _volume, mount = _mount(objects, "secret")
    secret = tmp_path / "secret"
    secret.mkdir()
    for name, source in (("tls.crt", test_pki.server_cert), ("tls.key", test_pki.server_key),
                         ("ca.crt", test_pki.ca_pem)):
        shutil.copy(source, secret / name)
    text = objects["ConfigMap"]["data"]["service.yaml"]
    assert mount["mountPath"] + "/" in text
    path = tmp_path / "service.yaml"
    path.write_text(text.replace(mount["mountPath"] + "/", f"{secret}/"))
    return path


def test_kubernetes_service_file_passes_check(k8s_service_file: Path, tmp_path: Path) -> None:
    _check(k8s_service_file, tmp_path)


def test_kubernetes_probe_needs_no_certificate_and_nothing_else_is_anonymous(
        k8s_service_file: Path) -> None:
    """The kubelet's HTTPS probe has no client certificate: it works only because the
    mode is optional and /healthz allows anonymous; every other path must not."""
    config = load_config(k8s_service_file)
    assert config.tls.mode == "optional"
    assert config.tls.reload_interval > 0  # cert-manager renewals are picked up
    policy = compile_policy(config.authorization.rules, config.authorization.default)
    assert policy.decide("/healthz", "GET", None).allowed
    for path in ("/", "/v1/things", "/healthz/more"):
        assert not policy.decide(path, "GET", None).allowed, path
    grace = _k8s_objects()["Deployment"]["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"]
    assert grace > config.server.shutdown_timeout


@pytest.mark.parametrize("name", SERVICE_FILES)
def test_proxy_backend_service_files_pass_check(name: str, tmp_path: Path,
                                                test_pki: PKIFiles) -> None:
    """With only the certificate directory given, every other value has a usable
    default, and nothing is worth a warning (plain HTTP is on loopback only)."""
    out = _check(DEPLOY / name, tmp_path, TLS_DIR=str(test_pki.dir))
    assert "warning:" not in out


def test_openstack_service_ini_passes_check(tmp_path: Path, test_pki: PKIFiles) -> None:
    """oslo.service names (cert_file, key_file, ca_file, version) and the Paste pipeline
    of etc/api-paste.ini."""
    ini = DEPLOY / "openstack" / "service.ini"
    env = {"PKI_DIR": str(test_pki.dir), "API_PASTE_CONFIG": str(REPO / "etc" / "api-paste.ini")}
    out = _check(ini, tmp_path, **env)
    assert "tls: mode=mutual versions=TLSv1.2-TLSv1.3" in out  # ca_file implies mutual
    assert "app: paste " in out
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        config = load_config(ini)
    assert config.tls.certfile == test_pki.server_cert
    assert config.tls.ca_certs == test_pki.ca_pem


def _directives(path: Path) -> list[tuple[str, str]]:
    """(key, value) of every `Key=value` line of a systemd unit file, in order."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [tuple(line.split("=", 1)) for line in lines
            if "=" in line and not line.startswith(("#", ";"))]


def test_systemd_drop_in_replaces_the_commands_of_the_shipped_unit() -> None:
    """A drop-in must empty ExecStart/ExecStartPre before setting them, and keep using
    the unit's own securewsgi-run."""
    unit = dict(_directives(REPO / "etc" / "securewsgi.service"))
    drop_in = _directives(DEPLOY / "openstack" / "myapi.service.d" / "securewsgi.conf")
    for key in ("ExecStartPre", "ExecStart"):
        values = [value for name, value in drop_in if name == key]
        assert values[0] == "" and len(values) == 2, key
        assert values[1].split()[0] == unit[key].split()[0]
        assert values[1].split()[1:3] == ["--config", "/etc/myapi/service.ini"]
    assert [v for k, v in drop_in if k == "ExecStartPre"][1].endswith("--check")


_BRACED = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


@pytest.mark.parametrize("template", sorted((DEPLOY / "nginx").glob("*.template")),
                         ids=lambda p: p.name)
def test_nginx_template_documents_its_placeholders(template: Path) -> None:
    """The envsubst command in the header lists exactly the placeholders the
    configuration uses (envsubst leaves an unlisted one as is: nginx would fail)."""
    text = template.read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    documented = re.search(r"envsubst '([^']*)'", text.replace("\n#", " "))
    assert documented, "no envsubst example in the header"
    assert set(_BRACED.findall(documented.group(1))) == set(_BRACED.findall(body))


def test_haproxy_config_runs_as_is() -> None:
    """Every environment variable in haproxy.cfg has a default: HAProxy would expand an
    unset one to nothing, silently."""
    text = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    variables = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(-[^}]*)?\}", body)
    assert variables
    assert [name for name, default in variables if not default] == []
