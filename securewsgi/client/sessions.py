"""Client side: a `requests.Session` (or a bare `ssl.SSLContext`) that talks to a
securewsgi server the safe way, with one clear error for every local mistake.

Why not just ``requests.Session()`` with ``verify=``/``cert=``:

* ``REQUESTS_CA_BUNDLE`` (and ``CURL_CA_BUNDLE``) silently override ``Session.verify``
  while ``trust_env`` is on (requests' documented precedence); many machines set
  them. The session made here has ``trust_env = False``, which also means proxy
  variables (``HTTPS_PROXY``, ``NO_PROXY``, ...) and ``~/.netrc`` are ignored: set
  ``session.proxies`` yourself.
* requests cannot load an encrypted client key (``cert=`` takes no password). Here
  the client certificate lives in our own `ssl.SSLContext`, loaded once with the
  password.
* A key that does not match its certificate, an encrypted key without a password or
  a missing file surface from OpenSSL as "PEM lib" or "key values mismatch" on the
  first request. Here each is a `ClientConfigError` naming the file, raised by
  `session()` itself.
* The context refuses anything below TLS 1.2, whatever the OpenSSL defaults are.

``session(config="client.yaml")`` reads the same four values from a small file::

    client:
      ca_certs: pki/ca.pem          # file, or a directory of *.pem/*.crt/*.cer
      certfile: pki/alice.pem
      keyfile: pki/alice-key.pem
      key_password: ${ALICE_KEY_PASSWORD}
      timeout: 10                   # optional default timeout in seconds

(or the INI form, a ``[client]`` section). Paths are relative to that file, ``${VAR}``
and ``${VAR:-default}`` expand from the environment as in the service file, and
keyword arguments given to `session()` win over the file.
"""
from __future__ import annotations

import configparser
import os
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Union

import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from requests.adapters import HTTPAdapter

from ..config.loader import INI_SUFFIXES, YAML_SUFFIXES, did_you_mean, expand_env
from ..errors import ConfigError, SecureWSGIError
from ..tls import pemkeys
from ..tls.context import ca_files, pem_certificates
from ..tls.pemkeys import KeyLoadError, load_private_key

__all__ = ["CONFIG_KEYS", "ClientConfigError", "ClientSettings", "read_client_config",
           "session", "ssl_context"]

StrPath = Union[str, "os.PathLike[str]"]
Password = Union[str, bytes, None]

#: Keys of the client section of a ``config=`` file.
CONFIG_KEYS = ("ca_certs", "certfile", "keyfile", "key_password", "timeout")
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class ClientConfigError(SecureWSGIError, ValueError):
    """A client file is missing or unusable; the message names the file and the fix.

    ``path`` is the file at fault (or None when no single file is).
    """

    def __init__(self, message: str, path: Optional[StrPath] = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)


@dataclass(frozen=True)
class ClientSettings:
    """What a client needs to reach a (mutual) TLS server; None = not given."""

    ca_certs: Optional[Path] = None
    certfile: Optional[Path] = None
    keyfile: Optional[Path] = None
    key_password: Password = None
    timeout: Optional[float] = None
    source: Optional[Path] = None  # the config file the values came from, if any
    section: Optional[str] = None
    # How errors name the settings when they came from elsewhere, e.g. the command
    # line flags {"certfile": "--cert"}; a setting not in it goes by its own name.
    labels: Optional[Mapping[str, str]] = field(default=None, compare=False, repr=False)

    def name(self, key: str) -> str:
        """The setting as its giver knows it: ``keyfile``, or ``--key`` with labels."""
        return self.labels.get(key, key) if self.labels else key

    def where(self, key: str) -> str:
        """How an error names the setting: ``keyfile``, ``FILE: client.keyfile``, or
        its label (``--key``)."""
        if self.source is None:
            return self.name(key)
        dotted = f"{self.section}.{key}" if self.section else key
        return f"{self.source}: {dotted}"


# ----------------------------------------------------------------------- public API


def session(
    ca_certs: Optional[StrPath] = None,
    certfile: Optional[StrPath] = None,
    keyfile: Optional[StrPath] = None,
    key_password: Password = None,
    *,
    config: Optional[StrPath] = None,
    section: Optional[str] = "client",
    timeout: Optional[float] = None,
) -> requests.Session:
    """A `requests.Session` that verifies the server with ``ca_certs`` and presents
    ``certfile``/``keyfile`` (TLS 1.2 or newer, ``trust_env = False``).

    ``ca_certs`` is a CA file or a directory of CA files; None means the system trust
    store (OpenSSL's default paths, not certifi). ``keyfile`` may be omitted when
    ``certfile`` holds the key too. ``timeout`` becomes the default of every request
    (requests itself has none). All files are read and cross-checked now: a mistake
    raises `ClientConfigError` naming the file.
    """
    settings = _merge(
        read_client_config(config, section) if config is not None else ClientSettings(),
        ca_certs=ca_certs, certfile=certfile, keyfile=keyfile, key_password=key_password,
        timeout=timeout,
    )
    preset_context = _build_context(settings)
    s = requests.Session()
    s.trust_env = False  # else REQUESTS_CA_BUNDLE overrides verify
    s.verify = str(settings.ca_certs) if settings.ca_certs is not None else True
    if settings.certfile is not None:
        s.cert = ((str(settings.certfile), str(settings.keyfile)) if settings.keyfile
                  else str(settings.certfile))
    adapter = _TLSAdapter(settings, preset_context, (s.verify, s.cert))
    s.mount("https://", adapter)
    s.mount("http://", adapter)  # the default timeout applies to plain HTTP as well
    return s


def ssl_context(
    ca_certs: Optional[StrPath] = None,
    certfile: Optional[StrPath] = None,
    keyfile: Optional[StrPath] = None,
    key_password: Password = None,
) -> ssl.SSLContext:
    """The client `ssl.SSLContext` `session()` uses, for ``http.client``, ``urllib``,
    websockets or raw sockets: hostname checking on, TLS 1.2 or newer, files checked."""
    return _build_context(_merge(ClientSettings(), ca_certs=ca_certs, certfile=certfile,
                                 keyfile=keyfile, key_password=key_password))


def settings_context(settings: ClientSettings) -> ssl.SSLContext:
    """`ssl_context` for ready `ClientSettings` (whose labels then name the settings in
    its errors, as `securewsgi-check` names its flags)."""
    return _build_context(settings)


def read_client_config(path: StrPath, section: Optional[str] = "client",
                       environ: Optional[Mapping[str, str]] = None) -> ClientSettings:
    """Read ``ca_certs``, ``certfile``, ``keyfile``, ``key_password`` and ``timeout``
    from ``section`` of a YAML or INI file (``section=None``: the YAML top level)."""
    source = Path(os.path.abspath(os.fspath(path)))
    environ = os.environ if environ is None else environ
    raw = _read_section(source, section)
    values: dict[str, Any] = {}
    where = ClientSettings(source=source, section=section).where
    for key, value in raw.items():
        if key not in CONFIG_KEYS:
            hint = did_you_mean(key, CONFIG_KEYS)
            raise ClientConfigError(f"{where(key)}: unknown key{hint}", source)
        if value is None:
            continue
        if isinstance(value, str):
            try:
                value = expand_env(value, environ, where(key), source)
            except ConfigError as exc:
                raise ClientConfigError(str(exc), source) from None
        values[key] = value
    settings = ClientSettings(source=source, section=section)
    for key in ("ca_certs", "certfile", "keyfile"):
        if key in values:
            settings = replace(settings, **{key: _relative_to(source, str(values[key]))})
    if "key_password" in values:
        settings = replace(settings, key_password=str(values["key_password"]))
    if "timeout" in values:
        settings = replace(settings, timeout=_timeout(values["timeout"], where("timeout")))
    return settings


# ------------------------------------------------------------------ reading settings


def _read_section(source: Path, section: Optional[str]) -> Mapping[str, Any]:
    try:
        content = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClientConfigError(f"{source}: no such file", source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientConfigError(f"{source}: cannot read: {exc}", source) from None
    suffix = source.suffix.lower()
    if suffix in INI_SUFFIXES:
        return _ini_section(source, content, section)
    if suffix in YAML_SUFFIXES:
        return _yaml_section(source, content, section)
    raise ClientConfigError(f"{source}: unknown file type: name it .yaml/.yml (YAML) or "
                            ".ini/.conf/.cfg (INI)", source)


def _yaml_section(source: Path, content: str, section: Optional[str]) -> Mapping[str, Any]:
    try:
        data = yaml.safe_load(content) or {}
    except yaml.YAMLError as exc:
        raise ClientConfigError(f"{source}: invalid YAML: {str(exc).splitlines()[0]}",
                                source) from None
    if section is not None:
        if not isinstance(data, Mapping) or section not in data:
            raise ClientConfigError(f"{source}: no '{section}' section", source)
        data = data[section] or {}
    if not isinstance(data, Mapping):
        raise ClientConfigError(f"{source}: {section or 'the top level'}: expected a "
                                "mapping of keys", source)
    return {str(k): v for k, v in data.items()}


def _ini_section(source: Path, content: str, section: Optional[str]) -> Mapping[str, Any]:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    try:
        parser.read_string(content, source=str(source))
    except configparser.Error as exc:
        raise ClientConfigError(f"{source}: invalid INI: {str(exc).splitlines()[0]}",
                                source) from None
    if section is None or not parser.has_section(section):
        raise ClientConfigError(f"{source}: no [{section}] section", source)
    return dict(parser.items(section))


def _relative_to(source: Path, value: str) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else source.parent / path


def _timeout(value: Any, where: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds > 0:
        raise ClientConfigError(f"{where}: expected a number of seconds > 0, got {value!r}")
    return seconds


def _merge(settings: ClientSettings, **given: Any) -> ClientSettings:
    """Keyword arguments (paths relative to the working directory) win over the file."""
    for key in ("ca_certs", "certfile", "keyfile"):
        if given[key] is not None:
            settings = replace(settings, **{key: Path(os.fspath(given[key]))})
    if given.get("key_password") is not None:
        settings = replace(settings, key_password=given["key_password"])
    if given.get("timeout") is not None:
        settings = replace(settings, timeout=_timeout(given["timeout"], "timeout"))
    if settings.keyfile is not None and settings.certfile is None:
        raise ClientConfigError(f"{settings.where('keyfile')}: {settings.keyfile}: a key "
                                f"without {settings.name('certfile')}; pass the client "
                                "certificate too",
                                settings.keyfile)
    return settings


# --------------------------------------------------------------- checking the files


def _read(settings: ClientSettings, key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        problem = "no such file"
    except IsADirectoryError:
        problem = "is a directory, not a file"
    except OSError as exc:
        problem = f"cannot read: {exc.strerror or exc}"
    raise ClientConfigError(f"{settings.where(key)}: {path}: {problem}", path)


def _certificates(settings: ClientSettings, key: str, path: Path) -> list[x509.Certificate]:
    certs = pem_certificates(_read(settings, key, path))
    if not certs:
        raise ClientConfigError(f"{settings.where(key)}: {path}: no PEM certificate in it",
                                path)
    return certs


def _ca_pem(settings: ClientSettings, path: Path) -> str:
    """Every CA of a file or directory as one PEM string (no c_rehash links needed)."""
    if path.is_dir():
        files = ca_files(path)
        if not files:
            raise ClientConfigError(f"{settings.where('ca_certs')}: {path}: no "
                                    ".pem/.crt/.cer files in this directory", path)
    else:
        files = [path]
    certs = [c for f in files for c in _certificates(settings, "ca_certs", f)]
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def _password_bytes(password: Password) -> Optional[bytes]:
    if password is None:
        return None
    return password if isinstance(password, bytes) else password.encode()


def _check_client_pair(settings: ClientSettings) -> None:
    """Load certificate and key with `cryptography` first: its failures can name the
    file and the fix, where OpenSSL would only say "PEM lib" or "key values mismatch"."""
    assert settings.certfile is not None
    cert = _certificates(settings, "certfile", settings.certfile)[0]
    key_key, key_path = (("keyfile", settings.keyfile) if settings.keyfile is not None
                         else ("certfile", settings.certfile))
    data = _read(settings, key_key, key_path)
    where = f"{settings.where(key_key)}: {key_path}"
    try:
        key = load_private_key(data, settings.key_password)
    except KeyLoadError as exc:
        if exc.problem == pemkeys.NO_KEY:
            hint = f"; pass {settings.name('keyfile')}" if key_key == "certfile" else ""
            problem = f"no PEM private key in it{hint}"
        elif exc.problem == pemkeys.NEEDS_PASSWORD:
            problem = f"the private key is encrypted; pass {settings.name('key_password')}"
        elif exc.problem == pemkeys.WRONG_PASSWORD:
            problem = f"wrong {settings.name('key_password')} for this encrypted key"
        else:
            problem = f"unreadable private key: {exc.detail}"
        raise ClientConfigError(f"{where}: {problem}", key_path) from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, public)
            != cert.public_key().public_bytes(serialization.Encoding.DER, public)):
        raise ClientConfigError(f"{where}: private key does not match the certificate in "
                                f"{settings.certfile}", key_path)


def _build_context(settings: ClientSettings, verify: bool = True) -> ssl.SSLContext:
    """A checked client context: CA from the settings (or the system store), the client
    certificate loaded with its password, TLS 1.2 floor, hostname checking on."""
    if not verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif settings.ca_certs is not None:
        # cadata at creation: then the system store is NOT loaded as well.
        context = ssl.create_default_context(cadata=_ca_pem(settings, settings.ca_certs))
    else:
        context = ssl.create_default_context()
    context.minimum_version = MINIMUM_VERSION
    if settings.certfile is not None:
        _check_client_pair(settings)
        password = _password_bytes(settings.key_password) or b""
        try:
            # Always a callable: without one OpenSSL prompts on the terminal (or fails).
            context.load_cert_chain(str(settings.certfile),
                                    str(settings.keyfile) if settings.keyfile else None,
                                    password=lambda: password)
        except ssl.SSLError as exc:  # the checks above passed, so this is rare
            raise ClientConfigError(f"{settings.where('certfile')}: {settings.certfile}: "
                                    f"OpenSSL refused it: {exc.reason or exc}",
                                    settings.certfile) from None
    return context


# ----------------------------------------------------------------------- the adapter

_Verify = Union[bool, str]
_Cert = Union[None, str, tuple]


class _TLSAdapter(HTTPAdapter):
    """An HTTPAdapter whose HTTPS pools use our contexts, never urllib3's own.

    The preset context (from `session()`) serves every request that keeps the
    session's ``verify``/``cert``. A request that overrides them (``verify=False``,
    another CA bundle or client pair) gets its own context built the same way (TLS 1.2
    floor, never a password prompt), cached per combination. urllib3 is handed no file
    names, so it never re-loads CAs or keys into a shared context per connection.
    """

    # requests >= 2.32.2 asks the adapter for each request's pool key; older versions
    # only ever use the pool manager's context, the preset one.
    _per_request = hasattr(HTTPAdapter, "build_connection_pool_key_attributes")

    def __init__(self, settings: ClientSettings, preset: ssl.SSLContext,
                 preset_key: tuple[_Verify, _Cert]) -> None:
        self._settings = settings
        self._preset = preset
        self._preset_key = preset_key
        self._contexts: dict[tuple[_Verify, _Cert], ssl.SSLContext] = {preset_key: preset}
        self._lock = threading.Lock()
        self._default_timeout = settings.timeout
        super().__init__()

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **pool_kwargs: Any) -> None:
        # Older requests (< 2.32.2) never call build_connection_pool_key_attributes;
        # there the preset context must sit on the pool manager itself.
        pool_kwargs.setdefault("ssl_context", self._preset)
        super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: Any = None, verify: _Verify = True, cert: _Cert = None,
             proxies: Any = None) -> requests.Response:
        if timeout is None:
            timeout = self._default_timeout
        if (request.url or "").lower().startswith("https:"):
            if not self._per_request and self._key(verify, cert) != self._preset_key:
                raise ClientConfigError("a per-request verify=/cert= different from the "
                                        "session's needs requests >= 2.32.2")
            # Build (and check) the context here: inside requests a ValueError from
            # building the pool key would be re-raised as InvalidURL.
            self._context_for(verify, cert)
        return super().send(request, stream=stream, timeout=timeout, verify=verify,
                            cert=cert, proxies=proxies)

    def build_connection_pool_key_attributes(self, request: requests.PreparedRequest,
                                             verify: _Verify, cert: _Cert = None
                                             ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert)
        if host_params.get("scheme") == "https":
            for name in ("ca_certs", "ca_cert_dir", "cert_file", "key_file"):
                pool_kwargs.pop(name, None)
            pool_kwargs["ssl_context"] = self._context_for(verify, cert)
            pool_kwargs["cert_reqs"] = "CERT_NONE" if verify is False else "CERT_REQUIRED"
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: _Verify, cert: _Cert) -> None:
        if not url.lower().startswith("https"):
            super().cert_verify(conn, url, verify, cert)
            return
        # The pool's ssl_context already holds CA and client certificate.
        conn.cert_reqs = "CERT_NONE" if verify is False else "CERT_REQUIRED"
        conn.ca_certs = conn.ca_cert_dir = None
        conn.cert_file = conn.key_file = None

    @staticmethod
    def _key(verify: _Verify, cert: _Cert) -> tuple[_Verify, _Cert]:
        return verify, tuple(cert) if isinstance(cert, list) else cert

    def _context_for(self, verify: _Verify, cert: _Cert) -> ssl.SSLContext:
        key = self._key(verify, cert)
        with self._lock:
            context = self._contexts.get(key)
            if context is None:
                context = self._contexts[key] = _build_context(
                    self._override(verify, key[1]), verify=verify is not False)
            return context

    def _override(self, verify: _Verify, cert: _Cert) -> ClientSettings:
        """Settings for a request that overrides the session's verify/cert."""
        ca = Path(verify) if isinstance(verify, str) else None
        certfile = keyfile = None
        if isinstance(cert, tuple):
            certfile, keyfile = (Path(cert[0]), Path(cert[1]) if cert[1] else None)
        elif cert:
            certfile = Path(cert)
        same_key = keyfile is not None and keyfile == self._settings.keyfile
        return ClientSettings(ca_certs=ca, certfile=certfile, keyfile=keyfile,
                              key_password=self._settings.key_password if same_key else None)
