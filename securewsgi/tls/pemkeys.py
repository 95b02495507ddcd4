"""Reading a PEM private key: the one loader the server, the client helper, the
checker and the development PKI share.

Each caller words its own error (a service-file key, a client argument, a PKI file),
so failures come back as a `KeyLoadError` whose `problem` says what went wrong.
"""
from __future__ import annotations

from typing import Any, Optional, Union

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ..errors import SecureWSGIError

#: `KeyLoadError.problem` values.
NO_KEY = "no key"                      # no "-----BEGIN ... PRIVATE KEY-----" block at all
NEEDS_PASSWORD = "needs password"      # encrypted, and no password was given
WRONG_PASSWORD = "wrong password"      # encrypted, and the password does not open it
UNREADABLE = "unreadable"              # not encrypted, but not a key cryptography reads
UNSUPPORTED = "unsupported type"       # a key, but not one of the types asked for

_ENCRYPTED_MARKS = (
    b"-----BEGIN ENCRYPTED PRIVATE KEY-----",  # PKCS#8 (openssl genpkey -aes256, ours)
    b"Proc-Type: 4,ENCRYPTED",                 # traditional OpenSSL PEM (openssl rsa -aes256)
)


class KeyLoadError(SecureWSGIError, ValueError):
    """A PEM private key could not be loaded; `problem` is one of the constants above
    and `detail` the library's own words (for `UNREADABLE`), else empty."""

    def __init__(self, problem: str, detail: str = "") -> None:
        super().__init__(f"{problem}: {detail}" if detail else problem)
        self.problem = problem
        self.detail = detail


def is_encrypted_key(data: bytes) -> bool:
    """Does this PEM hold a password-protected private key (either PEM form)?"""
    return any(mark in data for mark in _ENCRYPTED_MARKS)


def load_private_key(data: bytes, password: Union[str, bytes, None] = None,
                     types: Optional[tuple[type, ...]] = None) -> Any:
    """The private key in the PEM `data`, opened with `password` when it is encrypted
    (a password for a key that is not encrypted is ignored, as OpenSSL does).

    `types` limits the key classes accepted; `KeyLoadError` says what went wrong.
    """
    if b"PRIVATE KEY-----" not in data:
        raise KeyLoadError(NO_KEY)
    encrypted = is_encrypted_key(data)
    if encrypted and not password:
        raise KeyLoadError(NEEDS_PASSWORD)
    secret = password.encode() if isinstance(password, str) else password
    try:
        key = serialization.load_pem_private_key(data, secret if encrypted else None)
    except TypeError:  # encrypted after all, in a form the sniff does not know
        raise KeyLoadError(NEEDS_PASSWORD) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        if encrypted:
            raise KeyLoadError(WRONG_PASSWORD) from None
        raise KeyLoadError(UNREADABLE, str(exc)) from None
    if types is not None and not isinstance(key, types):
        raise KeyLoadError(UNSUPPORTED, type(key).__name__)
    return key
