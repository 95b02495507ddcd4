"""One family for every error securewsgi raises on purpose (`SecureWSGIError`), each
class keeping the standard base its callers already catch; and the one PEM key loader
(`securewsgi.tls.pemkeys`) the server, the client helper, the checker and the PKI share."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec

import securewsgi
from securewsgi import SecureWSGIError, pki
from securewsgi.client import ClientConfigError
from securewsgi.client.diagnose import UsageError
from securewsgi.config import load_config
from securewsgi.errors import ConfigError, StartupError
from securewsgi.http11 import Refusal
from securewsgi.identity.forwarded import ForwardedCertError, ServerCertError
from securewsgi.identity.paths import PathError
from securewsgi.pki import PKIError
from securewsgi.proxyprotocol import ProxyHeaderError
from securewsgi.tls import pemkeys
from securewsgi.tls.facts import ResumedPeerRefused
from securewsgi.tls.peer import CertificateParseError
from securewsgi.tls.pemkeys import KeyLoadError, load_private_key

# class -> the standard base it had before the family existed (still caught by it)
PUBLIC_ERRORS = {
    ConfigError: Exception, StartupError: Exception, PKIError: Exception,
    Refusal: Exception, ResumedPeerRefused: ValueError, PathError: ValueError,
    UsageError: ValueError, ClientConfigError: ValueError, ProxyHeaderError: ValueError,
    CertificateParseError: ValueError, ForwardedCertError: ValueError,
    ServerCertError: ValueError, KeyLoadError: ValueError,
}
# Control flow inside the HTTP engines, never seen outside them.
INTERNAL = {"_ClientGone", "_ClientTimeout", "_Ended"}


@pytest.mark.parametrize("cls", PUBLIC_ERRORS, ids=lambda c: c.__name__)
def test_every_error_is_a_securewsgi_error(cls: type) -> None:
    assert issubclass(cls, SecureWSGIError)
    assert issubclass(cls, PUBLIC_ERRORS[cls])


def test_no_exception_class_is_left_out() -> None:
    """Every exception class defined in the package is in the family (or internal)."""
    found = set()
    for module in pkgutil.walk_packages(securewsgi.__path__, "securewsgi."):
        if module.name.endswith("__main__") or module.name == "securewsgi.engines.eventlet":
            continue  # runs the command / imports eventlet into the test process
        for _, obj in inspect.getmembers(importlib.import_module(module.name),
                                         inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.name:
                found.add(obj)
    outside = {c.__name__ for c in found
               if not issubclass(c, SecureWSGIError) and c.__name__ not in INTERNAL}
    assert not outside
    assert {c for c in found if c.__name__ not in INTERNAL} == {*PUBLIC_ERRORS,
                                                                   SecureWSGIError}


def test_a_broken_service_file_is_caught_as_a_securewsgi_error(tmp_path: Path) -> None:
    path = tmp_path / "service.yaml"
    path.write_text("server:\n  prot: 8443\n")
    try:
        load_config(path)
    except SecureWSGIError as exc:
        caught = exc
    assert isinstance(caught, ConfigError)
    assert str(caught) == f"{path}: server.prot: unknown key (did you mean 'port'?)"


def test_the_family_is_exported_lazily() -> None:
    """`from securewsgi import SecureWSGIError` costs no eventlet import."""
    code = ("import sys; from securewsgi import SecureWSGIError; "
            "assert 'eventlet' not in sys.modules; print(SecureWSGIError.__doc__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert "catch this to catch every error securewsgi raises on purpose" in \
        " ".join(done.stdout.split())


# ------------------------------------------------------------------ PEM private keys


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return pki.generate_key()


def _pem(key: object, password: bytes | None = None,
         fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8) -> bytes:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption)  # type: ignore


@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.PKCS8,
                                 serialization.PrivateFormat.TraditionalOpenSSL])
def test_both_encrypted_pem_forms_are_recognised(key, fmt) -> None:
    """PKCS#8 ("BEGIN ENCRYPTED PRIVATE KEY") and OpenSSL's traditional form
    ("Proc-Type: 4,ENCRYPTED"), as `openssl genpkey -aes256` / `openssl ec -aes256`
    write them."""
    data = _pem(key, b"s3cret", fmt)
    assert pemkeys.is_encrypted_key(data)
    assert not pemkeys.is_encrypted_key(_pem(key, None, fmt))
    with pytest.raises(KeyLoadError) as info:
        load_private_key(data)
    assert info.value.problem == pemkeys.NEEDS_PASSWORD
    with pytest.raises(KeyLoadError) as info:
        load_private_key(data, "wrong")
    assert info.value.problem == pemkeys.WRONG_PASSWORD
    for password in ("s3cret", b"s3cret"):
        assert load_private_key(data, password).private_numbers() == key.private_numbers()


def test_key_loader_problems(key) -> None:
    cert_only = trustme.CA().cert_pem.bytes()
    with pytest.raises(KeyLoadError) as info:
        load_private_key(cert_only)
    assert info.value.problem == pemkeys.NO_KEY
    broken = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    with pytest.raises(KeyLoadError) as info:
        load_private_key(broken)
    assert info.value.problem == pemkeys.UNREADABLE and info.value.detail
    dsa_key = _pem(dsa.generate_private_key(2048))
    with pytest.raises(KeyLoadError) as info:
        load_private_key(dsa_key, types=(ec.EllipticCurvePrivateKey,))
    assert info.value.problem == pemkeys.UNSUPPORTED
    # a password for a key that is not encrypted is ignored, as OpenSSL does
    assert load_private_key(_pem(key), "unused").private_numbers() == key.private_numbers()
