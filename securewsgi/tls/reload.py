"""Certificate rotation without a restart: rebuild the TLS context from disk on SIGHUP,
or when the files' contents change (`tls.reload_interval`).

A context is bound to a connection when the connection is wrapped, so
swapping the context used for *new* connections is the whole trick: connections
already open keep theirs. New material goes through the same checks as at start-up;
if it fails them, the old context stays and one error line says why.

Change detection hashes file *contents*, reading paths as configured (not resolved),
so a Kubernetes secret update (an atomic swap of the `..data` symlink) is seen like any
other change. A change is loaded only after it has stayed the same for one whole
interval, so an editor or a tool that writes a file in two steps is not caught
half-way; and a failed version is not retried (nor re-logged) until it changes again.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import time
from pathlib import Path
from typing import Callable, Optional

from ..config import TLSConfig
from ..errors import ConfigError
from .context import ServerTLS, build_server_tls, ca_files, expiry_warning
from .validity import plural, time_left, when

log = logging.getLogger("securewsgi.tls")
_DAY_SECONDS = 86400.0


class TLSReloader:
    """The current `ServerTLS` of this process, replaced only by valid material."""

    # How often `check_expiry` looks at the certificate; it logs at most once a day,
    # and at once when the certificate expires while the server runs.
    EXPIRY_CHECK_SECONDS = 60.0

    def __init__(self, tls: TLSConfig, source: Path, current: ServerTLS,
                 announce: bool = True) -> None:
        self._tls = tls
        # The supervisor keeps a copy for the workers it forks; its workers say the
        # same things, so it says only what goes wrong.
        self._announce = announce
        self._source = source
        self.current = current
        self._loaded = self.fingerprint()
        self._candidate: Optional[str] = None
        self._refused: Optional[str] = None
        # The start-up lines already said how soon the certificate expires.
        self._expiry_noted = (self._expiry_state(), time.monotonic())
        # Told whether each reload succeeded (metrics count them once per service).
        self.on_result: Optional[Callable[[bool], None]] = None

    def for_worker(self) -> TLSReloader:
        """A copy for a worker forked from the supervisor: same material, same view of
        the files, and it says what it loads. Its reloads are not counted: the
        supervisor's, of the same files at the same moment, are the service's."""
        worker = copy.copy(self)
        worker._announce = True
        worker.on_result = None
        return worker

    def material(self) -> ServerTLS:
        """The TLS material for a new connection (called per connection: keep it cheap)."""
        return self.current

    def reload(self, why: str) -> bool:
        """Rebuild now (SIGHUP); keep the old material if the new one is invalid."""
        fingerprint = self.fingerprint()
        try:
            new = build_server_tls(self._tls, self._source)
        except ConfigError as exc:
            self._refused = fingerprint
            log.error("TLS reload (%s) failed; still serving the previous material: %s",
                      why, (exc.key and f"{exc.key}: {exc.message}") or exc.message)
            self._tell(False)
            return False
        self.current = new
        self._loaded, self._refused, self._candidate = fingerprint, None, None
        self._expiry_noted = (self._expiry_state(), time.monotonic())
        self._tell(True)
        if not self._announce:
            return True
        if new.certificate is not None:
            log.info("TLS material reloaded (%s): %s", why, loaded_text(new))
        for warning in new.warnings:
            log.warning("%s", warning)
        return True

    def _tell(self, ok: bool) -> None:
        if self.on_result is not None:
            self.on_result(ok)

    def check_expiry(self, now: Optional[float] = None) -> None:
        """Say again, daily, that the certificate expires soon or has expired, and at
        once when it expires while the server runs (called every EXPIRY_CHECK_SECONDS;
        `now` is a `time.monotonic()` reading)."""
        cert = self.current.certificate
        state = self._expiry_state()
        now = time.monotonic() if now is None else now
        noted_state, noted_at = self._expiry_noted
        if cert is None or state == "ok":
            self._expiry_noted = (state, now)
            return
        if state == noted_state and now - noted_at < _DAY_SECONDS:
            return
        self._expiry_noted = (state, now)
        warning = expiry_warning(self._tls, cert.not_after)
        if warning is not None:
            (log.error if state == "expired" else log.warning)("%s", warning)

    def _expiry_state(self) -> str:
        cert = self.current.certificate
        if cert is None or expiry_warning(self._tls, cert.not_after) is None:
            return "ok"
        return "expired" if cert.days_left() < 0 else "soon"

    def poll(self) -> None:
        """Called every `reload_interval`: reload once a change has settled."""
        fingerprint = self.fingerprint()
        if fingerprint in (self._loaded, self._refused):
            self._candidate = None
            return
        if fingerprint != self._candidate:
            self._candidate = fingerprint  # changed: wait one interval for it to settle
            return
        self.reload("files changed")

    def fingerprint(self) -> str:
        """A digest of every TLS file's current contents (missing files included)."""
        digest = hashlib.sha256()
        for path in self._files():
            digest.update(str(path).encode() + b"\0")
            try:
                digest.update(path.read_bytes())
            except OSError as exc:
                digest.update(f"unreadable: {exc.errno}".encode())
            digest.update(b"\0")
        return digest.hexdigest()

    def _files(self) -> list:
        files = []
        for path in (self._tls.certfile, self._tls.keyfile, self._tls.ca_certs,
                     self._tls.crl_file):
            if path is None:
                continue
            if path.is_dir():
                files.extend(ca_files(path))
            else:
                files.append(path)
        return files


def loaded_text(tls: ServerTLS) -> str:
    """What a reload loaded: `certificate CN=x serial 1A2B expires 2027-12-01 19:00 UTC
    (364 days left); 1 client CA; CRL: 2 revoked, next update 2027-01-01 19:00 UTC`."""
    cert = tls.certificate
    assert cert is not None
    parts = [f"certificate {cert.subject} serial {cert.serial:X} expires "
             f"{when(cert.not_after)} ({time_left(cert.not_after)})"]
    if tls.mode in ("optional", "mutual"):
        parts.append(plural(len(tls.ca_subjects), "client CA"))
    if tls.crl_revoked is not None:
        update = f", next update {when(tls.crl_next_update)}" if tls.crl_next_update else ""
        parts.append(f"CRL: {tls.crl_revoked} revoked{update}")
    return "; ".join(parts)
